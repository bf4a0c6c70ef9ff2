"""LMDB storage for partition logs: one environment per node, group-commit writer."""
