"""Generate the committed Python stubs from proto/.

Each proto package is generated into the source folder that installs as its
Python package: `proto/weir/v1` (the public API) into `sdk/v1` (`weir.v1`),
and `proto/weir/cluster/v1` (node-to-node messages) into `cluster/v1`
(`weir.cluster.v1`). `--check` regenerates into a temporary folder and fails
when any committed folder differs, so CI catches stubs that were not
regenerated.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


@dataclass(frozen=True)
class Target:
    """One proto package (a folder under proto/) and the folder its stubs live in."""

    package_dir: Path
    out_dir: Path

    @property
    def header(self) -> str:
        return f'"""Generated from proto/{self.package_dir} by tools/genproto.py; do not edit."""\n'


TARGETS = (
    Target(Path("weir") / "v1", ROOT / "sdk" / "v1"),
    Target(Path("weir") / "cluster" / "v1", ROOT / "cluster" / "v1"),
)


def _sources(target: Target) -> list[str]:
    return sorted(
        str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / target.package_dir).glob("*.proto")
    )


def generate(into: Path) -> None:
    """Run protoc once over every package, so imports across packages resolve."""
    sources = [s for t in TARGETS for s in _sources(t)]
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
    for target in TARGETS:
        if _sources(target):
            (into / target.package_dir / "__init__.py").write_text(target.header)


def _stale(fresh: Path, committed_dir: Path) -> list[str]:
    """Names of files that differ between a fresh generation and the committed folder."""
    names = sorted(p.name for p in fresh.iterdir() if p.is_file()) if fresh.is_dir() else []
    committed = sorted(p.name for p in committed_dir.glob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed_dir, names, shallow=False)
    if names != committed:
        return sorted(set(names) ^ set(committed)) + mismatch + errors
    return mismatch + errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        failed = False
        for target in TARGETS:
            fresh = Path(tmp) / target.package_dir
            out = target.out_dir.relative_to(ROOT)
            if args.check:
                stale = _stale(fresh, target.out_dir)
                if stale:
                    print(f"{out} is stale ({stale}); run `make proto`")
                    failed = True
                else:
                    print(f"{out} matches proto/{target.package_dir}")
                continue
            shutil.rmtree(target.out_dir, ignore_errors=True)
            if fresh.is_dir():
                shutil.copytree(fresh, target.out_dir)
                print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
