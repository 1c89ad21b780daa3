"""The gRPC layer: thin servicers that call the service with whole batches."""
