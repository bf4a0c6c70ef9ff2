"""The controller runs inside a Raft state machine: no I/O, clock or randomness at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import weir.cluster.controller

pytestmark = pytest.mark.timeout(10)

FORBIDDEN = {"asyncio", "grpc", "lmdb", "time", "threading", "socket", "os", "random", "uuid"}
PACKAGE = Path(weir.cluster.controller.__file__).parent


def test_the_controller_imports_nothing_that_does_io_or_draws_randomness() -> None:
    paths = sorted(PACKAGE.glob("*.py"))
    assert len(paths) >= 8
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
