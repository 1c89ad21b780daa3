"""Damage one page of a journal at a time; `serve` and `journal verify` must refuse.

For every page of a stopped server's ``journal/data.mdb``, a copy of its data
directory gets 4,080 random bytes at ``page * 4096 + 16`` (the page header
kept, as a torn or misdirected write leaves it). Then, on that copy, ``clearing
journal verify`` and ``clearing serve`` each run in a forked child of this
process (imports paid once) and the outcome is recorded: exit status or
signal, the last line of stderr, whether a traceback was printed, whether it
reached SERVING, and whether ``data.mdb`` changed.

    python -m loadgen.soak.pages CONFIG.toml DATA_DIR WORK_DIR  > outcomes.jsonl

Only loopback, bounded: a server that serves is stopped with SIGTERM.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import time

import msgspec

PAGE_BYTES = 4096  # LMDB's page on this platform (the journal's meta records it)
DAMAGE_OFFSET_BYTES = 16  # after the page header
SERVE_SECONDS_MAX = 60.0  # a small journal replays in well under this
STOP_SECONDS_MAX = 30.0
VERIFY_SECONDS_MAX = 60.0


class Outcome(msgspec.Struct):
    page: int
    command: str
    exit_code: int | None  # None: killed by a signal
    signal: int | None
    served: bool
    traceback: bool
    stderr_lines: list[str]
    stdout_tail: str
    file_changed: bool


def damage_page(path: str, page: int, seed: int) -> None:
    with open(path, "r+b") as f:
        f.seek(page * PAGE_BYTES + DAMAGE_OFFSET_BYTES)
        f.write(random.Random(seed * 100_003 + page).randbytes(PAGE_BYTES - DAMAGE_OFFSET_BYTES))


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _run_cli(args: list[str], out_path: str, err_path: str) -> int:
    """Fork a child running ``clearing ARGS`` with its output in files; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70  # EX_SOFTWARE: the CLI returned without an exit status
    try:
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(err, 2)
        from clearing.tools.cli import app

        app(args=args, prog_name="clearing")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # printed, as an uncaught one would be
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, seconds: float) -> int | None:
    """The child's wait status, or None if it is still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    return None


def _outcome(page: int, command: str, status: int, served: bool, out: str, err: str,
             changed: bool) -> Outcome:  # fmt: skip
    with open(out, errors="replace") as f:
        stdout = f.read()
    with open(err, errors="replace") as f:
        stderr = f.read()
    return Outcome(
        page=page,
        command=command,
        exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        served=served,
        traceback="Traceback" in stdout + stderr,
        stderr_lines=stderr.splitlines(),
        stdout_tail=stdout[-500:],
        file_changed=changed,
    )


def probe(config: str, data_dir: str, work: str, page: int, seed: int) -> list[Outcome]:
    """verify, then serve, on one copy of ``data_dir`` with ``page`` damaged."""
    copy = os.path.join(work, f"page-{page}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir, copy)
    journal = os.path.join(copy, "journal", "data.mdb")
    damage_page(journal, page, seed)
    before = _digest(journal)
    out, err = os.path.join(copy, "out.txt"), os.path.join(copy, "err.txt")
    outcomes = []
    pid = _run_cli(["journal", "verify", "--config", config, "--data-dir", copy], out, err)
    status = _wait(pid, VERIFY_SECONDS_MAX)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    outcomes.append(_outcome(page, "verify", status, False, out, err, _digest(journal) != before))
    serve = ["serve", "--config", config, "--data-dir", copy, "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    pid = _run_cli(serve, out, err)
    served, status = False, None
    deadline = time.monotonic() + SERVE_SECONDS_MAX
    while status is None and time.monotonic() < deadline:
        status = _wait(pid, 0.1)
        with open(out, errors="replace") as f, open(err, errors="replace") as g:
            if not served and '"serving"' in f.read() + g.read():
                served = True
                os.kill(pid, signal.SIGTERM)
                status = _wait(pid, STOP_SECONDS_MAX)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    outcomes.append(_outcome(page, "serve", status, served, out, err, _digest(journal) != before))
    shutil.rmtree(copy, ignore_errors=True)
    return outcomes


def main(argv: list[str]) -> None:
    config, data_dir, work = argv[:3]
    seed = int(argv[3]) if len(argv) > 3 else 1
    pages = os.path.getsize(os.path.join(data_dir, "journal", "data.mdb")) // PAGE_BYTES
    for page in range(pages):
        for outcome in probe(config, data_dir, work, page, seed):
            sys.stdout.write(msgspec.json.encode(outcome).decode() + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
