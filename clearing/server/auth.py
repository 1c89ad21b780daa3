"""Bearer-token principals and the role matrix (SPEC §9), in one table; under
mutual TLS, the terminal a client certificate names (``clearing.runtime.tls``)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from clearing.errors import ClearingError, Refusal, RequestRejected
from clearing.runtime.service import Principal, Service
from clearing.runtime.tls import certificate_terminal
from clearing.server.grpc_status import to_status

# "Service/Method" -> roles allowed. A method missing here is refused to all.
METHOD_ROLES: dict[str, frozenset[str]] = {
    "TapService/SubmitTaps": frozenset({"TERMINAL"}),
    "TapService/StreamTaps": frozenset({"TERMINAL"}),
    "CardService/IssueCard": frozenset({"HALL"}),
    "CardService/TopUp": frozenset({"HALL", "AGENT"}),
    "CardService/ReportLoss": frozenset({"HALL"}),
    "CardService/CancelLoss": frozenset({"HALL"}),
    "CardService/ReplaceCard": frozenset({"HALL"}),
    "CardService/CloseCard": frozenset({"HALL"}),
    "CardService/GetCard": frozenset({"HALL"}),
    "CardService/GetCardHistory": frozenset({"HALL"}),
    "DenyListService/GetDenyList": frozenset({"TERMINAL", "HALL", "ADMIN"}),
    "DenyListService/WatchDenyList": frozenset({"TERMINAL", "HALL", "ADMIN"}),
    "SettlementService/RunSettlement": frozenset({"FINANCE"}),
    "SettlementService/GetSettlement": frozenset({"FINANCE"}),
    **{
        f"AdminService/{method}": frozenset({"ADMIN"})
        for method in (
            "UpsertParty",
            "ListParties",
            "UpsertTerminal",
            "ListTerminals",
            "AddMerchantRule",
            "ListMerchantRules",
            "SetConcession",
            "ListConcessions",
            "GetTerminalStatus",
            "SetClock",
        )
    },
}

_BEARER = "bearer "


def table_method(path: str) -> str | None:
    """A call's ``METHOD_ROLES`` key: ``/clearing.v1.TapService/SubmitTaps`` ->
    ``TapService/SubmitTaps``; None for a method the table does not cover (health,
    reflection), which takes no token."""
    service, _, method = path.lstrip("/").partition("/")
    key = f"{service.rsplit('.', 1)[-1]}/{method}"
    return key if key in METHOD_ROLES else None


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith(_BEARER):
            return value[len(_BEARER) :].strip()
    return None


def authorize(service: Service, context: grpc.aio.ServicerContext, method: str) -> Principal:
    """The caller's principal, or a rejection: UNAUTHENTICATED / PERMISSION_DENIED."""
    token = bearer_token(context)
    if not token:
        raise RequestRejected(
            Refusal.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        )
    principal = service.principal(token)
    if principal is None:
        raise RequestRejected(Refusal.UNAUTHENTICATED, "unknown bearer token")
    server = service.config.server
    if server.tls_client_ca_file:  # only mutual TLS has client certificates
        check_certificate(principal, context, server.tls_terminal_certificate_required)
    if principal.role not in METHOD_ROLES.get(method, frozenset()):
        raise RequestRejected(
            Refusal.PERMISSION_DENIED, f"role {principal.role} may not call {method}"
        )
    return principal


def check_certificate(
    principal: Principal, context: grpc.aio.ServicerContext, terminal_required: bool
) -> None:
    """A certificate naming a terminal carries that terminal's token only; one
    naming no terminal carries any other token, and a terminal's only when
    ``[server] tls_terminal_certificate_required`` is off (see clearing.runtime.tls)."""
    terminal_id = certificate_terminal(context.auth_context())
    if terminal_id is None:
        if terminal_required and principal.role == "TERMINAL":
            raise RequestRejected(
                Refusal.PERMISSION_DENIED,
                f"terminal {principal.terminal_id}'s token needs its own client certificate "
                f"(subject CN or SAN terminal-{principal.terminal_id})",
            )
        return
    if principal.role != "TERMINAL":
        raise RequestRejected(
            Refusal.PERMISSION_DENIED,
            f"the client certificate is terminal {terminal_id}'s: "
            f"it may not carry a {principal.role} token",
        )
    if principal.terminal_id != terminal_id:
        raise RequestRejected(
            Refusal.PERMISSION_DENIED,
            f"the bearer token is terminal {principal.terminal_id}'s, "
            f"the client certificate terminal {terminal_id}'s",
        )


Handler = Callable[[Any, Any, grpc.aio.ServicerContext, Principal], Awaitable[Any]]


def rpc(method: str) -> Callable[[Handler], Callable[..., Awaitable[Any]]]:
    """Authorize a unary handler and map engine errors to gRPC statuses."""
    assert method in METHOD_ROLES, f"{method} is missing from METHOD_ROLES"

    def decorate(handler: Handler) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                principal = authorize(self.service, context, method)
                return await handler(self, request, context, principal)
            except ClearingError as exc:
                code, message = to_status(exc)
                await context.abort(code, message)

        return wrapper

    return decorate
