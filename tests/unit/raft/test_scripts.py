"""Runs every script in testdata/ (see script.py for the format and WEIR_REWRITE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .script import run_script

SCRIPTS = sorted((Path(__file__).parent / "testdata").glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    run_script(path, rewrite=os.environ.get("WEIR_REWRITE") == "1")
