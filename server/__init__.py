"""One Weir broker node: gRPC services, produce and consume paths, CLI."""
