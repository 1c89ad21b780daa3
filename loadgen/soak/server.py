"""A real ``clearing serve`` process on loopback, to kill, crash and restart."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping

import msgspec

from clearing.runtime.config import dump_config, parse_config
from clearing.tools.client import free_port, serve_command, wait_serving

START_SECONDS_MAX = 60.0  # replay of a soak's journal takes a second or two
STOP_SECONDS_MAX = 30.0  # a graceful stop commits, checkpoints and closes
LOG_TAIL_BYTES = 3_000


class ServerProcess:
    """``python -m clearing serve`` with its configuration and log under ``root``.

    ``env`` adds variables (a crash point), ``preexec`` runs in the child before
    exec (a resource limit). Each start listens on fresh loopback ports.
    """

    def __init__(
        self,
        root: str,
        config: Mapping,
        *,
        env: Mapping[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        os.makedirs(root, exist_ok=True)
        self.config = parse_config(dict(config))
        self.data_dir = self.config.server.data_dir
        self.config_path = os.path.join(root, "city.toml")
        with open(self.config_path, "w") as f:
            f.write(dump_config(self.config))
        self.log_path = os.path.join(root, "server.log")
        self.env = dict(env or {})
        self.preexec = preexec
        self.proc: subprocess.Popen | None = None
        self.target = self.metrics_target = ""
        self.starts = 0

    def reconfigure(self, **server) -> None:
        """Change [server] settings for the next start (a bigger map, say)."""
        self.config.server = msgspec.structs.replace(self.config.server, **server)
        with open(self.config_path, "w") as f:
            f.write(dump_config(self.config))

    async def start(self, *, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Start and wait for SERVING (the journal replayed); ``env`` for this start only."""
        self.target = f"127.0.0.1:{free_port()}"
        self.metrics_target = f"127.0.0.1:{free_port()}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                serve_command(self.target, self.metrics_target, config=self.config_path),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **self.env, **(env or {})},
                preexec_fn=self.preexec,
            )
        self.starts += 1
        try:
            await wait_serving(self.target, self.proc, START_SECONDS_MAX)
        except Exception as exc:
            self.kill()
            raise AssertionError(f"the server did not start: {exc}\n{self.log_tail()}") from exc
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self) -> int:
        """SIGTERM (graceful), then SIGKILL if it hangs; the exit code."""
        assert self.proc is not None
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def wait_exit(self, seconds: float) -> int | None:
        """The exit code once it ended by itself (a crash point), None if still running."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def rss_bytes(self) -> int:
        """Resident set size of the running server."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
