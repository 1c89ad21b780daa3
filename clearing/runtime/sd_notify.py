"""systemd's notify protocol (sd_notify(3)): one datagram of ``KEY=value`` lines.

The whole protocol the server needs is "send b"READY=1" to the AF_UNIX datagram
socket named by $NOTIFY_SOCKET", so it is these few lines rather than a
dependency. A name starting with "@" is in the abstract namespace (a leading NUL
byte). systemd's ``vsock:`` addresses (virtual machines) are not supported: the
unit runs the server on the host.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def address(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket address $NOTIFY_SOCKET names, in the form ``connect`` takes."""
    name = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]
    return name


class Notifier:
    """Connected once at construction; ``socket`` is None when there is nothing to tell
    (no $NOTIFY_SOCKET) or it cannot be reached. Sending never raises: systemd not
    hearing a status line must not stop the server."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.socket: socket.socket | None = None
        target = address(environ)
        if target is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            return
        self.socket = sock

    def notify(self, state: str) -> bool:
        """Send ``state`` (newline-separated ``KEY=value`` fields); True if it was sent."""
        if self.socket is None:
            return False
        try:
            self.socket.send(state.encode())
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
