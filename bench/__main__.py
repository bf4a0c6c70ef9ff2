"""`make bench`: run every benchmark; each prints JSON lines of figures."""

from __future__ import annotations

import importlib
import sys

BENCHES = [
    "bench.machine",
    "bench.raft_core",
    "bench.transport",
    "bench.host",
    "bench.storage",
    "bench.broker",
    "bench.sdk",
    "bench.cluster",
    "bench.consume_single",
    "bench.produce_single",
    "bench.groups",
]


def main() -> None:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.main()


if __name__ == "__main__":
    main()
