"""Operating the server: /metrics as Prometheus reads it, hot backup and restore,
`clearing status`, and logs (JSON lines with request ids, no card number whole)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys

import grpc

from clearing.runtime.logs import mask_cards
from clearing.tools.cli import EXIT_FAILED, EXIT_NOT_SERVING
from clearing.tools.client import bearer, channel
from clearing.tools.server_status import scrape
from clearing.v1 import cards_pb2, cards_pb2_grpc
from loadgen.soak.audit import audit
from loadgen.soak.city import TOKENS
from loadgen.soak.common import CARDS, served_balances, soak_city, traffic_for
from loadgen.soak.record import ClientLog
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

EXPORTED = {  # what operators' dashboards and alerts (ops/) rely on
    "clearing_taps_total",
    "clearing_tap_charged_fen_total",
    "clearing_batch_latency_seconds_bucket",
    "clearing_journal_commit_latency_seconds_bucket",
    "clearing_journal_entries_total",
    "clearing_journal_last_seq",
    "clearing_journal_size_bytes",
    "clearing_journal_map_size_bytes",
    "clearing_float_fen",
    "clearing_serving",
    "clearing_card_operations_total",
    "clearing_grpc_server_started_total",
    "clearing_grpc_server_handled_total",
    "clearing_grpc_server_handling_seconds_bucket",
    "clearing_deny_list_version",
    "clearing_terminal_gap_taps",
    "clearing_checkpoint_last_success_timestamp_seconds",
    "clearing_checkpoint_last_duration_seconds",
    "clearing_checkpoint_failures_total",
    "clearing_settlement_last_success_timestamp_seconds",
    "clearing_settlement_last_business_day_timestamp_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clearing", *args], capture_output=True, text=True, timeout=120
    )


async def _server(tmp_path, name: str, **env) -> ServerProcess:
    root = tmp_path / name
    server = ServerProcess(str(root), soak_city(str(root / "data")), env=env)
    return await server.start()


async def test_metrics_are_scraped_and_parsed_with_every_name_operators_use(tmp_path):
    server = await _server(tmp_path, "metrics")
    await traffic_for(Traffic(CARDS, 1), server, 0.3)
    async with channel(server.target) as chan:  # one refusal, so a non-OK code shows
        with contextlib.suppress(grpc.aio.AioRpcError):
            await cards_pb2_grpc.CardServiceStub(chan).GetCard(
                cards_pb2.GetCardRequest(card_id=CARDS[0]), metadata=bearer("wrong")
            )
    samples = await asyncio.to_thread(scrape, f"http://{server.metrics_target}/metrics")
    assert server.terminate() == 0
    names = {key.split("{")[0] for key in samples}
    assert names >= EXPORTED, EXPORTED - names
    label_names = {
        pair.split("=")[0] for k in samples if "{" in k for pair in k[:-1].split("{")[1].split(",")
    }
    assert not any("card" in name for name in label_names), label_names  # no per-card labels
    handled = {k: v for k, v in samples.items() if k.startswith("clearing_grpc_server_handled")}
    assert any("grpc_code=UNAUTHENTICATED" in k and "GetCard" in k for k in handled)
    assert samples["clearing_journal_map_size_bytes"] == 256 * 2**20
    assert samples["clearing_float_fen"] > 0


async def test_a_backup_taken_under_load_restores_to_a_server_serving_its_balances(tmp_path):
    server = await _server(tmp_path, "live")
    traffic = Traffic(CARDS, 2)
    stop = asyncio.Event()
    clients = asyncio.create_task(traffic.run(server.target, stop))
    await asyncio.sleep(0.5)
    backup_dir = str(tmp_path / "backup")
    taken = await asyncio.to_thread(
        _cli, "journal", "backup", backup_dir, "--config", server.config_path
    )
    await asyncio.sleep(0.3)  # the server kept writing after the copy
    stop.set()
    await clients
    assert taken.returncode == 0, taken.stderr
    assert server.terminate() == 0
    with open(os.path.join(backup_dir, "backup.json")) as f:
        manifest = json.load(f)

    # A backup whose journal does not end where its manifest says is refused, leaving nothing.
    lying = tmp_path / "lying"
    shutil.copytree(backup_dir, lying)
    (lying / "backup.json").write_text(json.dumps({**manifest, "last_seq": 1}))
    elsewhere = tmp_path / "elsewhere"
    refused = _cli("journal", "restore", str(lying), "--data-dir", str(elsewhere))
    assert refused.returncode == EXIT_FAILED and "damaged" in refused.stderr
    assert not os.path.exists(elsewhere / "journal" / "data.mdb")

    restored_root = tmp_path / "restored"
    restored = ServerProcess(str(restored_root), soak_city(str(restored_root / "data")))
    done = _cli("journal", "restore", backup_dir, "--config", restored.config_path)
    assert done.returncode == 0, done.stderr
    assert "journal OK" in done.stdout
    again = _cli("journal", "restore", backup_dir, "--config", restored.config_path)
    assert again.returncode != 0 and "already holds a journal" in again.stderr

    # The backup is a prefix of the live journal, and the restored server serves it.
    live = audit(server.data_dir, ClientLog())
    copy = audit(restored.data_dir, ClientLog(), sample_cards=CARDS)
    assert copy.violations == [] and 0 < copy.last_seq == manifest["last_seq"] < live.last_seq
    await restored.start()
    try:
        assert await served_balances(restored.target, CARDS) == copy.balances
    finally:
        assert restored.terminate() == 0


async def test_status_and_json_logs_with_request_ids_and_no_whole_card_number(tmp_path):
    server = await _server(tmp_path, "status", CLEARING_LOG_FORMAT="json")
    traffic = Traffic(CARDS, 3)
    await traffic_for(traffic, server, 0.3)
    async with channel(server.target) as chan:
        stub = cards_pb2_grpc.CardServiceStub(chan)
        request = cards_pb2.TopUpRequest(request_id="r1", card_id=CARDS[5], amount_fen=100)
        try:  # refused: an agent-only token may not read, a terminal may not top up
            await stub.TopUp(
                request, metadata=(*bearer(TOKENS["finance"]), ("x-request-id", "abc123"))
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND: a refusal naming a card
            await stub.GetCard(
                cards_pb2.GetCardRequest(card_id=9_000_777), metadata=bearer(TOKENS["hall"])
            )
    shown = await asyncio.to_thread(
        _cli, "status", "--target", server.target,
        "--metrics", f"http://{server.metrics_target}/metrics",
    )  # fmt: skip
    assert server.terminate() == 0
    assert shown.returncode == 0, shown.stderr
    for words in ("SERVING", "journal           entry", "deny list", "last settlement"):
        assert words in shown.stdout
    with open(server.log_path) as f:
        lines = [json.loads(line) for line in f if line.startswith("{")]
    refused = [e for e in lines if e.get("event") == "call refused"]
    assert any(e.get("request_id") == "abc123" for e in refused), refused[:3]
    assert any(e.get("code") == "NOT_FOUND" and "0777" in e.get("details", "") for e in refused)
    text = "\n".join(json.dumps(e) for e in lines)
    assert not any(str(card) in text for card in [*CARDS, 9_000_777])
    down = _cli("status", "--target", server.target, "--metrics", "http://127.0.0.1:1/metrics")
    assert down.returncode == EXIT_NOT_SERVING and "UNREACHABLE" in down.stdout


def test_card_numbers_are_masked_in_fields_and_in_text():
    event = mask_cards(
        None,
        "info",
        {"card_id": 3_100_000_000_012_345, "details": "card 3100000000012345 is lost", "seq": 7},
    )
    assert event == {
        "card_id": "************2345",
        "details": "card ************2345 is lost",
        "seq": 7,
    }
