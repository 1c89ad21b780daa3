"""Generated protobuf and gRPC stubs of clearing.v1 (built by setup.py from proto/)."""
