"""clearing.runtime.sd_notify against real AF_UNIX datagram sockets standing for systemd's."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from clearing.runtime.sd_notify import Notifier, address


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a short path (sun_path holds 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_ready_and_status_arrive_as_one_datagram(listener):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        assert notifier.notify("READY=1\nSTATUS=serving on 50051")
        assert notifier.notify("STOPPING=1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving on 50051"
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        notifier.close()


def test_abstract_namespace_name_starting_with_at():
    name = f"clearing-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        notifier.close()
        sock.close()


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert notifier.socket is None
    assert not notifier.notify("READY=1")
    assert address({"NOTIFY_SOCKET": ""}) is None


def test_unreachable_socket_is_reported_not_raised(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.socket is None
    assert not notifier.notify("READY=1")


def test_listener_gone_after_connect_is_not_an_error(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        assert notifier.socket is not None
        sock.close()  # systemd gone: the datagram has nowhere to go
        assert not notifier.notify("STOPPING=1")
    finally:
        notifier.close()
