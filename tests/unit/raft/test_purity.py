"""The core stays sans-I/O: no asyncio, grpc, lmdb, wall clock, or global random."""

from __future__ import annotations

import ast
from pathlib import Path

import weir.cluster.raft

FORBIDDEN = {"asyncio", "grpc", "lmdb", "time", "threading", "socket", "os"}
CORE = Path(weir.cluster.raft.__file__).parent


def test_core_imports_nothing_that_does_io() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_random_is_only_a_type() -> None:
    """Randomness is the injected `random.Random`; module-level functions are not used."""
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name):
                continue
            if node.value.id == "random":
                assert node.attr == "Random", f"{path.name} uses random.{node.attr}"
