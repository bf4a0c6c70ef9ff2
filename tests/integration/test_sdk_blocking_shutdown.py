"""Closing the blocking clients leaves nothing on stderr.

grpc.aio delivers a cancelled call's completion events after the call's
status is already set, to the loop that made the call; with a loop per
client that loop could be closed by then, and grpc logged "Event loop is
closed" from another client's loop (see weir/_sync.py). The round trip runs
in a fresh interpreter, so that stderr holds only what the SDK caused, and
closes consumers while the broker is still pushing records, which is when
late events are most likely.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    import weir

    address, topic = sys.argv[1], sys.argv[2]
    with weir.Admin(address) as admin:
        admin.create_topic(topic, partitions=2)
    for round_ in range(3):
        with weir.Producer(address, linger_ms=0) as producer:
            futures = [producer.send(topic, b"x" * 100) for _ in range(5000)]
        assert all(f.result(10).offset >= 0 for f in futures)
        # Two clients at once, closed in turn while the broker still pushes.
        admin = weir.Admin(address)
        with weir.Consumer(
            address, topic, start="earliest", group="g", max_outstanding_messages=5000
        ) as consumer:
            for _ in range(2000):
                assert consumer.poll(10) is not None
            consumer.commit()
            assert any(t.name == topic for t in admin.list_topics())
        admin.close()
    print("round trip done")
    """
)


def test_blocking_round_trip_prints_nothing_on_stderr(broker: BrokerProcess) -> None:
    for attempt in range(3):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, broker.address, f"shutdown-{attempt}"],
            capture_output=True,
            text=True,
            timeout=100,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "round trip done"
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr == ""
