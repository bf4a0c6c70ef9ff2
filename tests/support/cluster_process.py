"""Several real `weir serve` processes on loopback forming one cluster, for integration tests.

`ClusterProcess` composes one `BrokerProcess` per node. Each node gets a
fixed client port and a fixed peer port (picked free by binding port 0 and
releasing it, so a restart finds its node at the same addresses), its own
data folder, `--node-id`, `--cluster-id`, `--peer-listen` and `--peers`.
With `proxies=True` every node reaches every other node through its own
`FaultProxy` (see `fault_proxy.Topology`), so a test can cut, heal or slow
any link in one call. Processes are stopped, killed, paused and resumed by
their own pid only.

Fixtures (import all three into a test module, or into tests/conftest.py;
their Python names differ from the fixture names so that a test's argument
does not shadow an import):

    from tests.support.cluster_process import (  # noqa: F401 (fixtures)
        cluster_fixture, make_cluster_fixture, proxied_cluster_fixture)

- `cluster`: three started nodes, direct links;
- `proxied_cluster`: three started nodes, every link through a proxy;
- `make_cluster`: a factory, `make_cluster(nodes=1, proxies=True, extra_args=(...))`,
  whose clusters are all stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.fault_proxy import Cut, ProxyLoop, Topology
from weir.v1 import admin_pb2, admin_pb2_grpc

HOST = "127.0.0.1"
NODES_MAX = 7
START_ATTEMPTS_MAX = 3
CONVERGE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2
CALL_TIMEOUT_S = 5.0
# Lines a node prints when a port it was given is taken (gRPC and asyncio wordings).
_PORT_TAKEN = ("address already in use", "failed to bind", "errno 98")


def free_ports(count: int) -> list[int]:
    """Ports free right now on loopback (bound together, so distinct, then released).

    Another process may take one before the node binds it; `ClusterProcess.start`
    retries with new ports when a node reports its port taken.
    """
    sockets = [socket.create_server((HOST, 0)) for _ in range(count)]
    try:
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class PortTakenError(RuntimeError):
    pass


class ClusterProcess:
    """`nodes` real nodes with data under `tmp_path / f"node-{i}"`; node ids are 1..nodes."""

    def __init__(
        self,
        tmp_path: Path,
        nodes: int = 3,
        proxies: bool = False,
        extra_args: Sequence[str] = (),
        cluster_id: str = "test-cluster",
        pick_ports: Callable[[int], list[int]] = free_ports,
    ) -> None:
        assert 1 <= nodes <= NODES_MAX
        self.tmp_path = tmp_path
        self.node_ids = list(range(1, nodes + 1))
        self.use_proxies = proxies
        self.extra_args = tuple(extra_args)
        self.cluster_id = cluster_id
        self._pick_free_ports = pick_ports
        self.client_ports: dict[int, int] = {}
        self.peer_ports: dict[int, int] = {}
        self.topology: Topology | None = None
        self._proxy_loop: ProxyLoop | None = None
        self._nodes: dict[int, BrokerProcess] = {}
        self._paused: set[int] = set()

    # Addresses.

    @property
    def addresses(self) -> list[str]:
        """Client (public API) addresses, in node id order."""
        return [self.address(i) for i in self.node_ids]

    def address(self, node: int) -> str:
        return f"{HOST}:{self.client_ports[node]}"

    def peer_address(self, node: int) -> str:
        """Where `node` really listens for peers (not through a proxy)."""
        return f"{HOST}:{self.peer_ports[node]}"

    def peers_arg(self, node: int) -> str:
        if self.topology is not None:
            return self.topology.peers_arg(node)
        return ",".join(f"{j}={self.peer_address(j)}" for j in self.node_ids)

    def args(self, node: int) -> list[str]:
        """The flags `node` is started with (after BrokerProcess's own; argparse keeps the last)."""
        return [
            "--listen",
            self.address(node),
            "--node-id",
            str(node),
            "--cluster-id",
            self.cluster_id,
            "--peers",
            self.peers_arg(node),
            "--peer-listen",
            self.peer_address(node),
            *self.extra_args,
        ]

    def node(self, node: int) -> BrokerProcess:
        return self._nodes[node]

    # Life cycle.

    def start(self) -> ClusterProcess:
        """Start every node; on a taken port, stop them all and try again with new ports.

        The processes are launched together and then waited for: one at a
        time, each waited for the previous one to listen.
        """
        for attempt in range(START_ATTEMPTS_MAX):
            self._pick_ports()
            try:
                for node in self.node_ids:
                    self._launch_node(node)
                for node in self.node_ids:
                    self._wait_node(node)
                return self
            except PortTakenError:
                self.stop()
                if attempt == START_ATTEMPTS_MAX - 1:
                    raise
        raise AssertionError("unreachable")

    def _pick_ports(self) -> None:
        ports = self._pick_free_ports(2 * len(self.node_ids))
        self.client_ports = dict(zip(self.node_ids, ports[::2], strict=True))
        self.peer_ports = dict(zip(self.node_ids, ports[1::2], strict=True))
        if self.use_proxies:
            self._close_proxies()
            self._proxy_loop = ProxyLoop().start()
            self.topology = Topology(
                self._proxy_loop, {i: self.peer_address(i) for i in self.node_ids}
            )

    def _launch_node(self, node: int) -> None:
        process = BrokerProcess(self.tmp_path / f"node-{node}", *self.args(node))
        self._nodes[node] = process
        process.launch()

    def _wait_node(self, node: int) -> None:
        try:
            self._nodes[node].wait_started()
        except RuntimeError as error:
            if any(words in str(error).lower() for words in _PORT_TAKEN):
                raise PortTakenError(str(error)) from error
            raise

    def kill(self, node: int) -> None:
        """SIGKILL by pid: the crash case."""
        self._paused.discard(node)
        self._nodes[node].kill()

    def terminate(self, node: int) -> int:
        """SIGTERM and wait: the graceful case. Returns the exit code."""
        self.resume(node)
        return self._nodes[node].terminate()

    def start_node(self, node: int) -> BrokerProcess:
        """Start a stopped or killed node again, with its data and addresses."""
        return self._nodes[node].start()

    def restart(self, node: int) -> BrokerProcess:
        """Kill -9 and start again."""
        self.kill(node)
        return self.start_node(node)

    def pause(self, node: int) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing (a long GC, a frozen VM)."""
        os.kill(self._nodes[node].pid, signal.SIGSTOP)
        self._paused.add(node)

    def resume(self, node: int) -> None:
        if node in self._paused:
            os.kill(self._nodes[node].pid, signal.SIGCONT)
            self._paused.discard(node)

    def stop(self) -> None:
        """Stop every node (paused ones are resumed first, or SIGTERM would wait) and the proxies.

        Every node gets its SIGTERM first and then each is waited for: one
        at a time, a node's graceful stop took about a second while its
        peers were still up (2.9 s for three nodes, 0.3 s all at once).
        """
        for node in list(self._paused):
            self.resume(node)
        for process in self._nodes.values():
            process.request_stop()
        for process in self._nodes.values():
            process.stop()
        self._nodes.clear()
        self._close_proxies()

    def _close_proxies(self) -> None:
        if self._proxy_loop is not None:
            self._proxy_loop.close()
        self._proxy_loop = None
        self.topology = None

    def __enter__(self) -> ClusterProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def output(self, node: int) -> str:
        return self._nodes[node].output()

    def outputs(self) -> str:
        return "\n".join(f"--- node {i} ---\n{p.output()}" for i, p in self._nodes.items())

    # Faults between nodes (need proxies=True).

    def _require_topology(self) -> Topology:
        assert self.topology is not None, "start the cluster with proxies=True"
        return self.topology

    def isolate(self, node: int, mode: Cut = Cut.RESET) -> None:
        self._require_topology().isolate(node, mode)

    def partition(self, *sides: set[int], mode: Cut = Cut.RESET) -> None:
        self._require_topology().partition(*sides, mode=mode)

    def cut_one_way(self, frm: int, to: int, mode: Cut = Cut.RESET) -> None:
        self._require_topology().cut_one_way(frm, to, mode)

    def heal(self) -> None:
        self._require_topology().heal_all()

    # Waiting for the cluster.

    def describe(self, node: int) -> admin_pb2.DescribeClusterResponse:
        with grpc.insecure_channel(self.address(node)) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return stub.DescribeCluster(admin_pb2.DescribeClusterRequest(), timeout=CALL_TIMEOUT_S)

    def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout_s: float = CONVERGE_TIMEOUT_S,
        what: str = "condition",
    ) -> None:
        """Poll `predicate` (RpcErrors count as False) until true, or fail with every node's output."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout_s} s\n{self.outputs()}")
            time.sleep(POLL_INTERVAL_S)

    def sees_all_alive(self, node: int, among: Sequence[int] | None = None) -> bool:
        """`node` answers and reports every node of `among` (default: all) alive."""
        want = set(self.node_ids if among is None else among)
        alive = {n.node_id for n in self.describe(node).nodes if n.alive}
        return want <= alive

    def wait_converged(
        self, among: Sequence[int] | None = None, timeout_s: float = CONVERGE_TIMEOUT_S
    ) -> None:
        """Every node of `among` (default: all) sees every node of `among` alive."""
        nodes = list(self.node_ids if among is None else among)
        self.wait_until(
            lambda: all(self.sees_all_alive(n, nodes) for n in nodes),
            timeout_s,
            f"nodes {nodes} seeing each other alive",
        )


@pytest.fixture(name="make_cluster")
def make_cluster_fixture(tmp_path: Path) -> Iterator[Callable[..., ClusterProcess]]:
    """A factory of started clusters; each call gets its own folder; all stop at teardown."""
    made: list[ClusterProcess] = []

    def make(
        nodes: int = 3, proxies: bool = False, extra_args: Sequence[str] = ()
    ) -> ClusterProcess:
        cluster = ClusterProcess(
            tmp_path / f"cluster-{len(made)}", nodes=nodes, proxies=proxies, extra_args=extra_args
        )
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(name="cluster")
def cluster_fixture(make_cluster: Callable[..., ClusterProcess]) -> ClusterProcess:
    """Three started nodes on loopback, linked directly."""
    return make_cluster()


@pytest.fixture(name="proxied_cluster")
def proxied_cluster_fixture(make_cluster: Callable[..., ClusterProcess]) -> ClusterProcess:
    """Three started nodes on loopback, every link through its own fault proxy."""
    return make_cluster(proxies=True)
