"""TLS and mutual TLS by configuration (issue 7): handshakes that must fail do,
and under mutual TLS a terminal's certificate speaks for that terminal only.

Certificates come from ``trustme`` (a throwaway CA per test module); each
server runs in this process on a fresh data directory.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clearing.errors import ConfigError, Refusal, RequestRejected
from clearing.runtime.config import dump_config, load_config, parse_config
from clearing.runtime.tls import ClientTls, certificate_terminal
from clearing.server.app import Server
from clearing.tools.cli import EXIT_NOT_SERVING
from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import denylist_pb2
from loadgen.soak.city import (
    NOW_MS,
    TOKENS,
    VALIDATOR,
    VALIDATOR_2,
    city_dict,
    terminal_key,
    terminal_token,
)

CALL_SECONDS = 5.0  # a refused handshake answers at once; this only bounds a hang


class Pki:
    """Our CA with the server's certificate and clients', and a stranger's CA."""

    def __init__(self, root) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.key_file = self._write("server.key", server.private_key_pem.bytes())
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def client(self, *names: str, common_name: str | None = None, ca=None) -> ClientTls:
        """Trusts our CA; presents a certificate (of ``ca``, default ours) when names are given."""
        if not names:
            return ClientTls(self.ca.cert_pem.bytes())
        leaf = (ca or self.ca).issue_cert(*names, common_name=common_name)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return ClientTls(self.ca.cert_pem.bytes(), chain, leaf.private_key_pem.bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _config(tmp_path, pki: Pki, *, mutual: bool, **server):
    return parse_config(
        city_dict(
            str(tmp_path / "data"),
            tls_cert_file=pki.cert_file,
            tls_key_file=pki.key_file,
            tls_client_ca_file=pki.ca_file if mutual else "",
            **server,
        )
    )


async def _serve(config) -> AsyncIterator[str]:
    server = Server(config)
    port = await server.start("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
async def tls_target(tmp_path, pki) -> AsyncIterator[str]:
    async for target in _serve(_config(tmp_path, pki, mutual=False)):
        yield target


@pytest.fixture
async def mtls_target(tmp_path, pki) -> AsyncIterator[str]:
    async for target in _serve(_config(tmp_path, pki, mutual=True)):
        yield target


async def _deny_list(target: str, tls: ClientTls | None, token: str = TOKENS["hall"]) -> int:
    async with channel(target, tls=tls) as chan:
        reply = await Stubs(chan).deny.GetDenyList(
            denylist_pb2.GetDenyListRequest(), metadata=bearer(token), timeout=CALL_SECONDS
        )
    return reply.version


async def _refused(target: str, tls: ClientTls | None, token: str = TOKENS["hall"]):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _deny_list(target, tls, token)
    return info.value.code(), info.value.details()


async def _submit(target: str, tls: ClientTls, terminal_id: int, token_of: int) -> list:
    batch = signed_batch(terminal_id, terminal_key(terminal_id), [(1, 1, 100, NOW_MS, 1)])
    async with channel(target, tls=tls) as chan:
        reply = await Stubs(chan).taps.SubmitTaps(
            batch, metadata=bearer(terminal_token(token_of)), timeout=CALL_SECONDS
        )
    return unpack_results(reply)


# TLS -------------------------------------------------------------------------------------


async def test_tls_serves_a_client_that_trusts_our_ca(tls_target, pki):
    assert await _deny_list(tls_target, pki.client()) == 0
    async with channel(tls_target, tls=ClientTls.from_files(pki.ca_file)) as chan:
        reply = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_trusting_another_ca_fails_the_handshake(tls_target, pki):
    stranger = ClientTls(pki.other_ca.cert_pem.bytes())
    code, _ = await _refused(tls_target, stranger)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_target):
    code, _ = await _refused(tls_target, None)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_the_server_name_can_be_checked_apart_from_the_address(tls_target, pki):
    port = tls_target.rsplit(":", 1)[1]
    named = ClientTls(pki.ca.cert_pem.bytes(), server_name="localhost")
    assert await _deny_list(f"127.0.0.1:{port}", named) == 0
    wrong = ClientTls(pki.ca.cert_pem.bytes(), server_name="clearing.example")
    assert (await _refused(f"127.0.0.1:{port}", wrong))[0] == grpc.StatusCode.UNAVAILABLE


# Mutual TLS --------------------------------------------------------------------------------


async def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_target, pki):
    assert (await _refused(mtls_target, pki.client()))[0] == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_of_another_ca(mtls_target, pki):
    forged = pki.client("hall-desk-1", ca=pki.other_ca)
    assert (await _refused(mtls_target, forged))[0] == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_serves_a_good_certificate(mtls_target, pki):
    assert await _deny_list(mtls_target, pki.client("hall-desk-1")) == 0


async def test_a_terminal_certificate_carries_its_own_terminal_token_only(mtls_target, pki):
    cert_101 = pki.client("terminal-101", common_name="terminal-101")
    assert len(await _submit(mtls_target, cert_101, VALIDATOR, VALIDATOR)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:  # terminal 102's token, 101's certificate
        await _submit(mtls_target, cert_101, VALIDATOR_2, VALIDATOR_2)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "terminal 102's" in info.value.details() and "terminal 101's" in info.value.details()
    code, details = await _refused(mtls_target, cert_101, TOKENS["hall"])
    assert code == grpc.StatusCode.PERMISSION_DENIED and "HALL token" in details


async def test_the_terminal_may_be_named_by_a_subject_alternative_name(mtls_target, pki):
    cert_102 = pki.client("terminal-102", common_name="validator on bus 7")
    assert len(await _submit(mtls_target, cert_102, VALIDATOR_2, VALIDATOR_2)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _submit(mtls_target, cert_102, VALIDATOR, VALIDATOR)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_certificate_naming_no_terminal_carries_other_tokens_only(mtls_target, pki):
    desk = pki.client("hall-desk-1", common_name="hall-desk-1")
    assert await _deny_list(mtls_target, desk, TOKENS["hall"]) == 0
    code, details = await _refused(mtls_target, desk, terminal_token(VALIDATOR))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "own client certificate" in details
    code, _ = await _refused(mtls_target, desk, "not-a-known-token-at-all")
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_terminal_tokens_over_any_certificate_when_so_configured(tmp_path, pki):
    config = _config(tmp_path, pki, mutual=True, tls_terminal_certificate_required=False)
    desk = pki.client("hall-desk-1", common_name="hall-desk-1")
    async for target in _serve(config):
        assert len(await _submit(target, desk, VALIDATOR, VALIDATOR)) == 1


async def test_an_ambiguous_terminal_certificate_is_refused(mtls_target, pki):
    two = pki.client("terminal-101", "terminal-102")
    code, details = await _refused(mtls_target, two, terminal_token(VALIDATOR))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "several terminals" in details


def test_certificate_names_are_read_strictly():
    def named(*names: bytes, cn: bytes = b"desk") -> int | None:
        return certificate_terminal(
            {"x509_common_name": [cn], "x509_subject_alternative_name": list(names)}
        )

    assert named() is None and named(b"localhost") is None
    assert named(cn=b"terminal-101") == 101 == named(b"terminal-101", cn=b"terminal-101")
    assert certificate_terminal({}) is None  # plaintext or no client certificate
    for bad in (b"terminal-0101", b"terminal-", b"terminal-1x", b"Terminal-99999999999"):
        with pytest.raises(RequestRejected) as info:
            named(bad)
        assert info.value.code is Refusal.PERMISSION_DENIED


# Configuration -------------------------------------------------------------------------------


def test_tls_settings_are_checked_at_load(tmp_path, pki):
    def refused(**server) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(city_dict("var", **server))
        return str(info.value)

    assert "both" in refused(tls_cert_file=pki.cert_file)
    assert "both" in refused(tls_key_file=pki.key_file)
    assert "needs tls_cert_file" in refused(tls_client_ca_file=pki.ca_file)
    missing = str(tmp_path / "missing.pem")
    assert "tls_cert_file: cannot read" in refused(tls_cert_file=missing, tls_key_file=missing)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert "not PEM" in refused(tls_cert_file=pki.cert_file, tls_key_file=str(not_pem))
    stranger_key = tmp_path / "stranger.key"
    stranger_key.write_bytes(pki.ca.issue_cert("x.example").private_key_pem.bytes())
    assert "not the private key" in refused(
        tls_cert_file=pki.cert_file, tls_key_file=str(stranger_key)
    )
    assert "tls_client_ca_file" in refused(
        tls_cert_file=pki.cert_file, tls_key_file=pki.key_file, tls_client_ca_file=str(not_pem)
    )
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\n...\n")
    assert "encrypted" in refused(tls_cert_file=pki.cert_file, tls_key_file=str(encrypted))
    with pytest.raises(ConfigError, match="needs its key"):
        ClientTls.from_files(pki.ca_file, cert_file=pki.cert_file)
    for grace in (-1, 10_000, float("nan")):
        assert "grace_seconds" in refused(grace_seconds=grace)


def test_tls_and_grace_settings_round_trip_through_toml(tmp_path, pki):
    config = _config(tmp_path, pki, mutual=True, grace_seconds=2.5)
    path = tmp_path / "city.toml"
    path.write_text(dump_config(config))
    assert load_config(str(path)) == config
    plain = parse_config(city_dict("var", grace_seconds=3))  # an integer is seconds too
    assert plain.server.grace_seconds == 3.0 and plain.server.tls_cert_file == ""


async def test_reflection_stays_off_unless_configured(tls_target, pki):
    async with channel(tls_target, tls=pki.client()) as chan:
        call = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _status(target: str, *tls_args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "clearing", "status", "--target", target]
    argv += ["--metrics", "http://127.0.0.1:1/metrics", *tls_args]  # health is what counts here
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


async def test_clearing_status_speaks_tls(tls_target, pki):
    plain = await asyncio.to_thread(_status, tls_target)
    assert plain.returncode == EXIT_NOT_SERVING and "UNREACHABLE" in plain.stdout
    shown = await asyncio.to_thread(_status, tls_target, "--ca", pki.ca_file)
    assert shown.returncode == 0 and "SERVING" in shown.stdout, shown.stdout + shown.stderr


async def test_clearing_status_speaks_mutual_tls(mtls_target, pki, tmp_path):
    without = await asyncio.to_thread(_status, mtls_target, "--ca", pki.ca_file)
    assert without.returncode == EXIT_NOT_SERVING and "UNREACHABLE" in without.stdout
    desk = pki.ca.issue_cert("desk-1")
    cert, key = tmp_path / "desk.pem", tmp_path / "desk.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in desk.cert_chain_pems))
    key.write_bytes(desk.private_key_pem.bytes())
    args = ("--ca", pki.ca_file, "--cert", str(cert), "--key", str(key))
    mutual = await asyncio.to_thread(_status, mtls_target, *args)
    assert mutual.returncode == 0 and "SERVING" in mutual.stdout, mutual.stdout + mutual.stderr
