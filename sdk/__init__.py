"""Weir: partitioned replayable streams and work queues behind one gRPC API."""
