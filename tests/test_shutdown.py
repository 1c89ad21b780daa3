"""Graceful shutdown (issue 7): SIGTERM under load, health during the grace
period, streams ended promptly, a second signal, systemd notifications.

The signal tests run a real ``clearing serve`` and judge it by the offline
audit of its journal against what the clients were told; the others run the
server in this process, where a call can be held in flight on purpose.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clearing.limits import GRACE_SECONDS
from clearing.server.app import STOPPING_MESSAGE, Server
from clearing.tools.client import bearer, channel, signed_batch, unpack_results
from clearing.v1 import admin_pb2, cards_pb2, denylist_pb2, taps_pb2_grpc
from loadgen.soak.audit import audit
from loadgen.soak.city import NOW_MS, TOKENS, VALIDATOR, terminal_key, terminal_token
from loadgen.soak.common import CARDS, served_balances, soak_city
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic
from tests.conftest import Harness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOAD_SECONDS = 1.0  # traffic before the signal: enough for hundreds of acknowledged taps
EXIT_SECONDS_MAX = 30.0
# Open streams must not hold the grace period (10 s): the stop takes well under it.
PROMPT_STOP_SECONDS = GRACE_SECONDS / 2
CARD = CARDS[0]
# What grpc tells a call still running when the grace period is over.
CUT_SHORT = (grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")


def _process(tmp_path) -> ServerProcess:
    data_dir = str(tmp_path / "data")
    return ServerProcess(str(tmp_path), soak_city(data_dir, checkpoint_every_taps=400))


async def _exit_code(server: ServerProcess) -> int:
    """Wait for the process in a thread: the clients in this loop keep reading answers."""
    assert server.proc is not None
    return await asyncio.to_thread(server.proc.wait, EXIT_SECONDS_MAX)


async def _signal_under_load(tmp_path, signals: int) -> tuple[ServerProcess, Traffic, float]:
    """Traffic, then ``signals`` SIGTERMs 50 ms apart; (server, traffic, seconds to exit)."""
    server = await _process(tmp_path).start()
    traffic = Traffic(CARDS, seed=11)
    stop = asyncio.Event()
    clients = asyncio.create_task(traffic.run(server.target, stop))
    await asyncio.sleep(LOAD_SECONDS)
    started = time.monotonic()
    for _ in range(signals):
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
    code = await _exit_code(server)
    seconds = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(clients, EXIT_SECONDS_MAX)
    assert code == 0, server.log_tail()
    return server, traffic, seconds


def _assert_clean(server: ServerProcess, traffic: Traffic):
    found = audit(server.data_dir, traffic.log, sample_cards=CARDS)
    assert (found.lost, found.duplicated) == (0, 0), found.violations
    assert not found.violations and not traffic.violations
    assert found.acknowledged > 0
    return found


async def test_sigterm_under_load_exits_0_and_loses_nothing(tmp_path):
    server, traffic, seconds = await _signal_under_load(tmp_path, signals=1)
    found = _assert_clean(server, traffic)
    assert seconds < PROMPT_STOP_SECONDS, "an open stream held the grace period"
    with open(server.log_path) as f:
        log = f.read()
    assert "stopping: no new calls" in log and "stopped" in log
    # The checkpoint the graceful stop wrote restarts to exactly the journal's balances.
    await server.start()
    try:
        assert await served_balances(server.target, CARDS) == found.balances
    finally:
        assert server.terminate() == 0


async def test_a_second_sigterm_during_the_grace_period_breaks_nothing(tmp_path):
    server, traffic, _ = await _signal_under_load(tmp_path, signals=2)
    _assert_clean(server, traffic)
    with open(server.log_path) as f:
        assert "second signal" in f.read()


def _notify_socket() -> tuple[socket.socket, str]:
    """A datagram socket to stand for systemd's (short path: sun_path holds 108 bytes)."""
    path = os.path.join(tempfile.mkdtemp(prefix="sd-", dir="/tmp"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


async def _datagram(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), EXIT_SECONDS_MAX)).decode()


async def test_systemd_hears_ready_then_stopping_and_health_watchers_not_serving(tmp_path):
    sock, path = _notify_socket()
    server = ServerProcess(
        str(tmp_path), soak_city(str(tmp_path / "data")), env={"NOTIFY_SOCKET": path}
    )
    try:
        await server.start()
        port = server.target.rsplit(":", 1)[1]
        assert (await _datagram(sock)).split("\n") == ["READY=1", f"STATUS=serving on {port}"]
        async with channel(server.target) as chan:
            watch = health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            server.proc.send_signal(signal.SIGTERM)
            assert (await _datagram(sock)).startswith("STOPPING=1\n")
            assert (await watch.read()).status == NOT_SERVING  # before the stream ends
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await watch.read()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await _exit_code(server) == 0
    finally:
        server.kill()
        sock.close()
        os.unlink(path)


# In process: a call held in flight -------------------------------------------------------


class Held:
    """GetCard made slow on purpose: it waits for ``release`` once entered."""

    def __init__(self, server: Server) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        original = server.service.get_card

        async def get_card(card_id: int):
            self.entered.set()
            await self.release.wait()
            return await original(card_id)

        server.service.get_card = get_card


@pytest.fixture
async def held(city):
    h = await Harness(city).start()
    await h.issue(CARD, balance_fen=500)
    hold = Held(h.server)
    call = asyncio.ensure_future(
        h.stubs.cards.GetCard(
            cards_pb2.GetCardRequest(card_id=CARD), metadata=bearer(TOKENS["hall"])
        )
    )
    await hold.entered.wait()
    try:
        yield h, hold, call
    finally:
        hold.release.set()
        await asyncio.gather(call, return_exceptions=True)
        await h.stop()  # a second stop of a stopped server does nothing


async def test_health_is_not_serving_while_a_slow_call_finishes(held):
    h, hold, call = held
    # The watch on the sync stack: the asyncio client may report the stream the server
    # ends as CANCELLED or INTERNAL instead of its status (grpc/grpc#36066).
    sync_chan = grpc.insecure_channel(f"127.0.0.1:{h.server.port}")
    watch = health_pb2_grpc.HealthStub(sync_chan).Watch(health_pb2.HealthCheckRequest())
    assert (await asyncio.to_thread(next, watch)).status == SERVING
    started = time.monotonic()
    stopping = asyncio.ensure_future(h.server.stop(GRACE_SECONDS))
    assert (await asyncio.to_thread(next, watch)).status == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(next, watch)  # the watch ends promptly, with the reason
    sync_chan.close()
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        STOPPING_MESSAGE,
    )
    async with channel(f"127.0.0.1:{h.server.port}") as fresh:  # no new calls
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(fresh).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not call.done() and not stopping.done()  # the slow call is still in its grace
    hold.release.set()
    assert (await call).balance_fen == 500  # and it finishes with its answer
    await asyncio.wait_for(stopping, PROMPT_STOP_SECONDS)
    assert time.monotonic() - started < PROMPT_STOP_SECONDS
    assert not h.server.service.serving


async def test_a_call_past_the_grace_period_is_cancelled_and_the_stop_completes(held):
    h, _, call = held
    started = time.monotonic()
    await h.server.stop(0.5)
    assert 0.5 <= time.monotonic() - started < 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert (info.value.code(), info.value.details()) == CUT_SHORT


async def test_hurry_cuts_the_grace_period_short(held):
    h, _, call = held
    started = time.monotonic()
    stopping = asyncio.ensure_future(h.server.stop(GRACE_SECONDS))
    await asyncio.sleep(0.3)
    h.server.hurry()  # what a second SIGTERM does
    await asyncio.wait_for(stopping, 3)
    assert time.monotonic() - started < 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert (info.value.code(), info.value.details()) == CUT_SHORT


async def test_streams_end_promptly_and_every_answered_batch_is_journaled(harness):
    h = harness
    for card in (CARD, CARD + 1):
        await h.issue(card, balance_fen=50_000)
    watch = h.stubs.deny.WatchDenyList(
        denylist_pb2.GetDenyListRequest(since_version=0), metadata=bearer(TOKENS["hall"])
    )
    await watch.read()
    sent: list[list[tuple[int, ...]]] = []
    answered: list[list[tuple[int, ...]]] = []
    twenty = asyncio.Event()
    loop = asyncio.get_running_loop()

    def upload() -> tuple[grpc.StatusCode, str]:
        """A validator uploading until the server ends the stream, on the sync stack:
        the asyncio client may report a stream the server ended before reading it all
        as INTERNAL "Internal error from Core" (grpc/grpc#36066)."""

        def batches():
            seq = 1
            while True:
                taps = [(CARD + i % 2, seq + i, 10, NOW_MS, 1) for i in range(10)]
                seq += 10
                sent.append(taps)
                yield signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)
                time.sleep(0.002)

        with grpc.insecure_channel(f"127.0.0.1:{h.server.port}") as chan:
            replies = taps_pb2_grpc.TapServiceStub(chan).StreamTaps(
                batches(), metadata=bearer(terminal_token(VALIDATOR))
            )
            try:
                for reply in replies:
                    answered.append(unpack_results(reply))
                    if len(answered) == 20:
                        loop.call_soon_threadsafe(twenty.set)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        return grpc.StatusCode.OK, "the stream ended without an error"

    uploading = asyncio.ensure_future(asyncio.to_thread(upload))
    await twenty.wait()
    started = time.monotonic()
    stopping = asyncio.ensure_future(h.server.stop(GRACE_SECONDS))
    assert await asyncio.wait_for(uploading, 2) == (
        grpc.StatusCode.UNAVAILABLE,
        STOPPING_MESSAGE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watch.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(stopping, PROMPT_STOP_SECONDS)
    assert time.monotonic() - started < 2
    assert len(answered) < len(sent)  # the validator was still sending when it ended
    await h.restart()
    status = await h.stubs.admin.GetTerminalStatus(
        admin_pb2.GetTerminalStatusRequest(terminal_id=VALIDATOR), metadata=bearer(TOKENS["admin"])
    )
    assert status.received_count == 10 * len(answered)  # read means answered, nothing more
