"""Replication and storage: the Raft core, LMDB storage, (later) the multi-Raft host."""
