"""A real `weir serve` process for integration tests.

The process listens on a free loopback port (the node binds port 0 and
prints the port it got), keeps its LMDB files in a temporary folder, and is
stopped by its own pid only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path

_READY = re.compile(r"listening on (\S+:\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# The nodes' log level; WEIR_TEST_NODE_LOG_LEVEL=INFO to see more while chasing a failure.
NODE_LOG_LEVEL = os.environ.get("WEIR_TEST_NODE_LOG_LEVEL", "WARNING")
# Lines of a node's output that a failed test's report shows (tests/conftest.py).
REPORT_LINES = 200

# Every process a test launched and has not dropped: a failed test's report
# shows their output (tests/conftest.py), which is how a CI failure is read.
LAUNCHED: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()


class BrokerProcess:
    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.address = ""
        self._port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._output: list[str] = []
        self._pump_thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> BrokerProcess:
        """Start the process and wait until it listens."""
        self.launch()
        return self.wait_started()

    def launch(self) -> None:
        """Start the process without waiting (`wait_started` waits), so that several start at once."""
        assert self._proc is None or self._proc.poll() is not None
        cmd = [
            sys.executable,
            "-m",
            "weir.server.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self._port}",
            *self.extra_args,
        ]
        # Every `weir serve` flag is also a WEIR_* variable: a developer's
        # shell must not configure the nodes a test starts.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
        env.update(WEIR_LOG_LEVEL=NODE_LOG_LEVEL, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._ready = threading.Event()
        LAUNCHED.add(self)
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self._proc, self._ready), daemon=True
        )
        self._pump_thread.start()

    def wait_started(self) -> BrokerProcess:
        """Wait until the launched process listens; RuntimeError with its output if it does not."""
        if not self._ready.wait(START_TIMEOUT_S) or not self.address:
            self.kill()
            raise RuntimeError("weir serve did not start:\n" + self.output())
        # Restarts reuse the port so clients can reconnect to the same address.
        self._port = int(self.address.rsplit(":", 1)[1])
        return self

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._output.append(line)
            match = _READY.search(line)
            if match and not ready.is_set():
                self.address = match.group(1)
                ready.set()
        ready.set()

    def state(self) -> str:
        """'running', or how the process ended."""
        if self._proc is None:
            return "not started"
        code = self._proc.poll()
        return "running" if code is None else f"exited with {code}"

    def output(self) -> str:
        return "".join(self._output[-REPORT_LINES:])

    def rss_bytes(self) -> int:
        """Resident set size from /proc, in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT_S)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(STOP_TIMEOUT_S)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def request_stop(self) -> None:
        """SIGTERM without waiting (`stop` or `terminate` waits), so that several stop at once."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)

    def terminate(self) -> int:
        """SIGTERM and wait: the graceful case. Returns the exit code."""
        assert self._proc is not None
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
        code = self._proc.wait(STOP_TIMEOUT_S)
        self._close_pipe()
        return code

    def restart(self) -> BrokerProcess:
        self.kill()
        return self.start()

    def stop(self) -> None:
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()
