#!/usr/bin/env bash
# Build the wheel and install it into two fresh venvs (no editable install,
# no source tree on the path):
#   sdk:    the wheel alone. The SDK and the client commands import, the
#           broker's dependencies (the `server` extra) are absent, and
#           `weir serve` says in one line which extra to install.
#   server: the wheel with the `server` extra. Every module it holds imports
#           and `weir serve` is the real command.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/.venv/bin/python" -m build --wheel --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
wheel="$(echo "$work"/dist/weir-*.whl)"
cd "$work"

# The two venvs install at the same time: most of the time is pip's.
python3 -m venv "$work/sdk"
python3 -m venv "$work/server"
"$work/sdk/bin/pip" install --quiet "$wheel" >"$work/sdk.log" 2>&1 &
sdk_pip=$!
"$work/server/bin/pip" install --quiet "$wheel[server]" >"$work/server.log" 2>&1 \
  || { cat "$work/server.log"; exit 1; }
wait "$sdk_pip" || { cat "$work/sdk.log"; exit 1; }

check_imports() {
  "$work/$1/bin/python" - "$root" "$1" <<'PY'
import importlib
import importlib.util
import pathlib
import sys

root = pathlib.Path(sys.argv[1])
kind = sys.argv[2]
# The broker's dependencies, as server/cli.py names them (SERVER_EXTRA_MODULES).
server_extra = ("lmdb", "grpc_health", "grpc_reflection")
mapping = {"sdk": "weir", "server": "weir.server", "cluster": "weir.cluster"}
expected = []
for folder, package in mapping.items():
    for path in sorted((root / folder).rglob("*.py")):
        rel = path.relative_to(root / folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if folder == "sdk" and parts and parts[0] in ("server", "cluster"):
            continue
        if kind == "sdk" and folder != "sdk":
            # Without the extra only the client commands of weir.server must import.
            if folder == "cluster" or not parts or not parts[-1].startswith("cli"):
                continue
            if parts[-1] == "cli_serve":
                continue
        expected.append(".".join([package, *parts]))
for name in expected:
    module = importlib.import_module(name)
    assert str(root) not in (module.__file__ or ""), f"{name} imported from the source tree"
present = [m for m in server_extra if importlib.util.find_spec(m) is not None]
if kind == "sdk":
    assert not present, f"the SDK alone installed the broker's dependencies: {present}"
else:
    assert present == list(server_extra), f"the server extra lacks {set(server_extra) - set(present)}"
print(f"wheel ok ({kind}): imported {len(expected)} modules")
PY
}

check_imports sdk
check_imports server

# The console script: the version from the package metadata in both; `serve`
# refused in one line without the extra, real with it.
version="$("$work/sdk/bin/weir" --version)"
[ "$version" = "$("$work/server/bin/weir" --version)" ] || { echo "versions differ"; exit 1; }
echo "$version" | grep -Eq '^weir [0-9]' || { echo "bad version: $version"; exit 1; }
"$work/sdk/bin/weir" topic list --help >/dev/null
status=0
"$work/sdk/bin/weir" serve --data-dir "$work/data" >"$work/serve.out" 2>"$work/serve.err" || status=$?
if [ "$status" != 1 ] || [ -s "$work/serve.out" ] || [ "$(wc -l <"$work/serve.err")" != 1 ] \
  || ! grep -q "weir\[server\]" "$work/serve.err"; then
  echo "weir serve without the server extra: exit $status, expected one line naming weir[server]:"
  cat "$work/serve.out" "$work/serve.err"
  exit 1
fi
"$work/server/bin/weir" --help >/dev/null
"$work/server/bin/weir" serve --help | grep -q -- "--data-dir"
echo "console script ok: $version; without the extra: $(cat "$work/serve.err")"
