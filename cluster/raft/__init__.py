"""Sans-I/O Raft consensus core (no asyncio, grpc, lmdb, wall clock or global random)."""
