#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv (no editable install, no
# source tree on the path) and import every module it should contain.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/.venv/bin/python" -m build --wheel --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$work"/dist/weir-*.whl
cd "$work"
"$work/venv/bin/python" - "$root" <<'PY'
import importlib
import pathlib
import sys

root = pathlib.Path(sys.argv[1])
mapping = {"sdk": "weir", "server": "weir.server", "cluster": "weir.cluster"}
expected = []
for folder, package in mapping.items():
    for path in sorted((root / folder).rglob("*.py")):
        rel = path.relative_to(root / folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if folder == "sdk" and parts and parts[0] in ("server", "cluster"):
            continue
        expected.append(".".join([package, *parts]))
for name in expected:
    module = importlib.import_module(name)
    assert str(root) not in (module.__file__ or ""), f"{name} imported from the source tree"
print(f"wheel ok: imported {len(expected)} modules")
PY
"$work/venv/bin/weir" --help >/dev/null
