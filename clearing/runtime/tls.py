"""TLS and mutual TLS by configuration (SPEC §9).

Server side: ``[server] tls_cert_file`` + ``tls_key_file`` turn TLS on;
``tls_client_ca_file`` also requires every client to present a certificate
signed by that CA (mutual TLS). Without them the port is plaintext, as before.

Terminal identity: under mutual TLS a client certificate whose subject CN or a
subject alternative name is ``terminal-<id>`` (e.g. ``terminal-101``) speaks
for that terminal only: the bearer token must be that terminal's own, and any
other token (another terminal's, a hall's, an admin's) is PERMISSION_DENIED.
A certificate that names no terminal (a hall desk's, finance's, an operator's
tool) proves only that the caller holds a certificate of the configured CA;
the bearer token then decides the principal, except that a terminal's token
is refused over it unless ``[server] tls_terminal_certificate_required`` is
turned off (so a leaked terminal token is useless without the terminal's key).

Client side: ``ClientTls`` builds channel credentials for ``clearing.tools.client.channel``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clearing.errors import ConfigError, Refusal, RequestRejected
from clearing.limits import TLS_FILE_BYTES_MAX, UINT32_MAX

if TYPE_CHECKING:  # loading a configuration (offline tools too) must not import grpc
    import grpc

TERMINAL_NAME_PREFIX = "terminal-"
_TERMINAL_NAME = re.compile(r"terminal-([1-9][0-9]{0,9})")
# auth_context() keys (grpc's ssl transport) that may name the peer.
_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def read_pem(path: str, what: str) -> bytes:
    """A PEM file's bytes, or a ConfigError naming ``what`` (the setting) and the problem."""
    try:
        size = os.path.getsize(path)
        if size > TLS_FILE_BYTES_MAX:
            raise ConfigError(
                f"{what} {path!r} is {size} bytes: not a PEM file (at most {TLS_FILE_BYTES_MAX})"
            )
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path!r}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path!r} is not PEM (no -----BEGIN line)")
    return data


def check_server_files(cert_file: str, key_file: str, client_ca_file: str) -> None:
    """Refuse at load what would otherwise fail only at the first handshake:
    one of the pair missing, unreadable files, a key that is not the certificate's."""
    if bool(cert_file) != bool(key_file):
        raise ConfigError(
            "[server] tls_cert_file and tls_key_file go together: set both (TLS) or neither"
        )
    if client_ca_file and not cert_file:
        raise ConfigError(
            "[server] tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file too"
        )
    if not cert_file:
        return
    read_pem(cert_file, "[server] tls_cert_file")
    if b"ENCRYPTED" in read_pem(key_file, "[server] tls_key_file"):
        raise ConfigError(
            f"[server] tls_key_file {key_file!r} is encrypted: gRPC takes an unencrypted key "
            "(protect the file with its permissions instead)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # a password never prompts on a terminal: a key needing one fails here
        context.load_cert_chain(cert_file, key_file, password=b"")
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"[server] tls_key_file {key_file!r} is not the private key of tls_cert_file "
            f"{cert_file!r}, or one of them is damaged ({exc})"
        ) from exc
    if client_ca_file:
        read_pem(client_ca_file, "[server] tls_client_ca_file")
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"[server] tls_client_ca_file {client_ca_file!r} holds no usable CA "
                f"certificate ({exc})"
            ) from exc


@dataclass(frozen=True)
class ServerTls:
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None  # set: mutual TLS, a client certificate is required

    @property
    def mode(self) -> str:
        return "mutual TLS" if self.client_ca else "TLS"

    def credentials(self) -> grpc.ServerCredentials:
        import grpc

        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def server_tls(cert_file: str, key_file: str, client_ca_file: str) -> ServerTls | None:
    """The server's TLS material read now (at start), or None for a plaintext port."""
    check_server_files(cert_file, key_file, client_ca_file)
    if not cert_file:
        return None
    return ServerTls(
        read_pem(cert_file, "[server] tls_cert_file"),
        read_pem(key_file, "[server] tls_key_file"),
        read_pem(client_ca_file, "[server] tls_client_ca_file") if client_ca_file else None,
    )


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for a TLS channel (PEM bytes)."""

    root_certificates: bytes | None = None  # None: the system's trusted roots
    certificate_chain: bytes | None = None  # mutual TLS: the client's certificate...
    private_key: bytes | None = None  # ...and its key
    server_name: str | None = None  # check the server's certificate for this name instead

    @classmethod
    def from_files(
        cls,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        if bool(cert_file) != bool(key_file):
            raise ConfigError("a client certificate needs its key, and a key its certificate")
        return cls(
            read_pem(ca_file, "the CA file") if ca_file else None,
            read_pem(cert_file, "the client certificate") if cert_file else None,
            read_pem(key_file, "the client key") if key_file else None,
            server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )

    def options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def certificate_terminal(auth_context: Mapping[str, Sequence[bytes]]) -> int | None:
    """The terminal the peer's certificate names (CN or a SAN), None if it names none.

    A name that starts like a terminal's but is not a valid one, or two names
    for different terminals, is refused: a certificate must not be ambiguous
    about whom it speaks for.
    """
    found: set[int] = set()
    for key in _NAME_KEYS:
        for raw in auth_context.get(key, ()):
            name = raw.decode(errors="replace")
            if not name.lower().startswith(TERMINAL_NAME_PREFIX):
                continue
            match = _TERMINAL_NAME.fullmatch(name)
            if match is None or int(match.group(1)) > UINT32_MAX:
                raise RequestRejected(
                    Refusal.PERMISSION_DENIED,
                    f"the client certificate names {name[:80]!r}: not a terminal identity "
                    f"({TERMINAL_NAME_PREFIX}<id>, id 1..{UINT32_MAX})",
                )
            found.add(int(match.group(1)))
    if len(found) > 1:
        raise RequestRejected(
            Refusal.PERMISSION_DENIED,
            f"the client certificate names several terminals {sorted(found)}: it must name one",
        )
    return found.pop() if found else None
