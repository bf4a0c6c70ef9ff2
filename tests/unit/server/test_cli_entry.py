"""The `weir` entry point: `--version`, and `serve` when the broker's dependencies are missing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from weir.server import cli

pytestmark = pytest.mark.timeout(60)


def test_version_prints_the_installed_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"weir {importlib.metadata.version('weir')}\n"


def test_version_from_a_fresh_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weir.server.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"weir {importlib.metadata.version('weir')}"


def test_every_server_extra_module_is_installed_here() -> None:
    """The dev venv installs the server extra, so the real `serve` is what tests run."""
    assert cli.missing_server_modules() == []


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--data-dir", "/nowhere", "--listen", "127.0.0.1:0"],
        ["serve", "--help"],
        ["--json", "serve", "extra", "words"],
    ],
)
def test_serve_without_the_server_extra_names_the_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setattr(cli, "missing_server_modules", lambda: ["lmdb", "grpc_health"])
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: weir serve needs the broker's dependencies")
    assert "lmdb, grpc_health" in line
    assert "weir[server]" in line


def test_client_commands_still_refuse_unknown_arguments_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "missing_server_modules", lambda: ["lmdb"])
    with pytest.raises(SystemExit) as exited:
        cli.main(["topic", "list", "--no-such-flag"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_serve_raises_only_the_collectors_first_threshold() -> None:
    # A fresh interpreter: the test process's own collector stays as it is.
    code = (
        "import gc; from weir.server import cli_serve; before = gc.get_threshold();"
        " cli_serve.tune_gc(); after = gc.get_threshold();"
        " assert after == (cli_serve.GC_GEN0_THRESHOLD, *before[1:]), (before, after);"
        " assert after[0] > before[0]"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
