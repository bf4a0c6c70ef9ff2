"""Generate the committed Python stubs (sdk/v1) from proto/weir/v1.

`--check` regenerates into a temporary folder and fails when the committed
files differ, so CI catches stubs that were not regenerated.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path("weir") / "v1"
OUT_DIR = ROOT / "sdk" / "v1"
HEADER = '"""Generated from proto/weir/v1 by tools/genproto.py; do not edit."""\n'


def generate(into: Path) -> None:
    sources = sorted(
        str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE_DIR).glob("*.proto")
    )
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (into / PACKAGE_DIR / "__init__.py").write_text(HEADER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if sdk/v1 is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE_DIR
        if args.check:
            names = sorted(p.name for p in fresh.iterdir() if p.is_file())
            committed = sorted(p.name for p in OUT_DIR.glob("*") if p.is_file())
            _, mismatch, errors = filecmp.cmpfiles(fresh, OUT_DIR, names, shallow=False)
            if names != committed or mismatch or errors:
                print(f"sdk/v1 is stale ({mismatch + errors or committed}); run `make proto`")
                return 1
            print("sdk/v1 matches proto/")
            return 0
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUT_DIR)
    print(f"wrote {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
