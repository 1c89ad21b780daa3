"""Storage faults: a full LMDB map, a full filesystem, stale readers.

The server must stop acknowledging, turn NOT_SERVING and say why; after the
operator makes room and restarts it, nothing acknowledged is lost and the
journal verifies.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import grpc
import lmdb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clearing.storage.journal import journal_path
from clearing.tools.client import bearer, channel
from clearing.v1 import cards_pb2, cards_pb2_grpc
from loadgen.soak.audit import audit
from loadgen.soak.city import TOKENS
from loadgen.soak.common import CARDS, check_served, soak_city, traffic_for
from loadgen.soak.kill import SAMPLE_CARDS, retry_unknown
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

MAP_TINY_BYTES = 2**20  # the smallest map the configuration accepts: full within seconds
MAP_ROOMY_BYTES = 64 * 2**20
FS_BYTES = 16 * 2**20  # the size-limited filesystem
FS_FREE_BYTES = 3 * 2**20  # room left beside the ballast: full within seconds
FILL_SECONDS_MAX = 60.0  # traffic until the storage is full, at most this long
AFTER_SECONDS = 0.5  # traffic after the restart, to show it serves again


async def refusal(target: str) -> tuple[int, str]:
    """(health status, details of a top-up's refusal) of a server that hit a fault."""
    async with channel(target) as chan:
        health = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
        request = cards_pb2.TopUpRequest(request_id="after-fault", card_id=CARDS[0], amount_fen=1)
        try:
            await cards_pb2_grpc.CardServiceStub(chan).TopUp(
                request, metadata=bearer(TOKENS["hall"]), timeout=10
            )
            details = "(the top-up was acknowledged)"
        except grpc.aio.AioRpcError as exc:
            details = f"{exc.code().name}: {exc.details()}"
    return health.status, details


async def _fault_and_recover(
    name: str, server: ServerProcess, expect: tuple[str, ...], make_room, seed: int
) -> ScenarioResult:
    """Fill the storage under traffic, check the refusal, make room, restart, audit."""
    result = ScenarioResult(name, runs=1)
    traffic = Traffic(CARDS, seed)
    await server.start()
    await traffic_for(traffic, server, FILL_SECONDS_MAX)
    status, details = await refusal(server.target)
    result.check(status == health_pb2.HealthCheckResponse.NOT_SERVING, f"health is {status}")
    result.check(any(e in details for e in expect), f"the refusal does not say why: {details}")
    result.note = details[:90]
    result.check(server.terminate() == 0, "the stop after the fault did not exit 0")
    result.take(audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS), "after the fault")
    make_room()
    await server.start()
    found = audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS)
    await check_served(server, found, result, "after the restart")
    await retry_unknown(traffic, server.target)
    await traffic_for(traffic, server, AFTER_SECONDS)
    result.check(server.terminate() == 0, "the final stop did not exit 0")
    result.take(audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS), "at the end")
    result.violations += traffic.violations
    return result


async def map_full(root: str, seed: int) -> ScenarioResult:
    base = os.path.join(root, "map-full")
    server = ServerProcess(
        base, soak_city(os.path.join(base, "data"), map_size_bytes=MAP_TINY_BYTES)
    )
    return await _fault_and_recover(
        "storage: LMDB map full",
        server,
        ("map is full",),
        lambda: server.reconfigure(map_size_bytes=MAP_ROOMY_BYTES),
        seed,
    )


async def disk_full(root: str, seed: int) -> ScenarioResult:
    """A tmpfs of FS_BYTES holds the data directory (a file size limit where mounting
    is not allowed); a ballast file leaves FS_FREE_BYTES; deleting it makes room."""
    base = os.path.join(root, "disk-full")
    mount = os.path.join(base, "fs")
    os.makedirs(mount, exist_ok=True)
    mounted = _mount_tmpfs(mount)
    data_dir = os.path.join(mount, "data")
    limit = _file_size_limit(FS_BYTES - FS_FREE_BYTES) if not mounted else None
    server = ServerProcess(base, soak_city(data_dir), preexec=limit)
    ballast = os.path.join(mount, "ballast")
    try:
        if mounted:
            await server.start()  # the journal is created before the disk fills
            server.terminate()
            _fill(mount, ballast)

        def make_room() -> None:
            if mounted:
                os.unlink(ballast)
            else:
                server.preexec = None

        name = "storage: filesystem full" + ("" if mounted else " (file size limit)")
        return await _fault_and_recover(name, server, ("disk full", "size limit"), make_room, seed)
    finally:
        if server.running:
            server.kill()
        if mounted:
            subprocess.run(["umount", mount], check=False)


def _mount_tmpfs(path: str) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", path],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _fill(mount: str, ballast: str) -> None:
    stat = os.statvfs(mount)
    size = stat.f_bavail * stat.f_frsize - FS_FREE_BYTES
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, size))


def _file_size_limit(size_bytes: int):
    def limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, size_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death

    return limit


READER = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=4, lock=True)
txn = env.begin() if sys.argv[2] == "txn" else None
print("open", flush=True)
time.sleep(60)
"""


def _open_reader(path: str, mode: str) -> subprocess.Popen:
    """A process with the journal open (``mode`` "txn": inside a read transaction)."""
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, path, mode], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != "open":
        _end(reader)
        raise AssertionError("a reader process did not open the journal")
    return reader


def _end(reader: subprocess.Popen) -> None:
    """Kill a reader and reap it, its pipe closed too."""
    reader.kill()
    reader.wait()
    if reader.stdout is not None:
        reader.stdout.close()


async def stale_readers(root: str, seed: int) -> ScenarioResult:
    """A reader killed inside a read transaction leaves its slot behind while another
    process keeps the journal open (LMDB resets the table only when nobody has it
    open); the server's start clears it, so old pages can be reused."""
    result = ScenarioResult("storage: stale reader slots", runs=1)
    base = os.path.join(root, "stale-readers")
    server = ServerProcess(base, soak_city(os.path.join(base, "data")))
    await server.start()
    server.terminate()
    path = journal_path(server.data_dir)
    holder = _open_reader(path, "hold")  # an operator's verify or backup, say
    try:
        killed = _open_reader(path, "txn")
        _end(killed)
        listed = f" {killed.pid} " in _readers(path)
        result.check(listed, "the killed reader's slot was not there to clear")
        await server.start()
        result.check(f" {killed.pid} " not in _readers(path), "the start left the stale slot")
        result.check(server.terminate() == 0, "the stop did not exit 0")
    finally:
        _end(holder)
    result.note = f"slot of killed pid {killed.pid} cleared" if listed else ""
    return result


def _readers(path: str) -> str:
    env = lmdb.open(path, readonly=True, max_dbs=4, lock=True)
    try:
        return env.readers()
    finally:
        env.close()
