"""Citizen-card clearing and settlement engine."""

import os

# The server forks a child to write each checkpoint (clearing.storage.checkpoints); the child
# never touches gRPC. gRPC's own fork handlers would try to pause its threads around
# every fork (or log that they cannot): off, before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
