"""The fault-injecting proxy, checked with plain loopback sockets.

Each test builds a target listener, connects through a proxy, and accepts
the proxy's upstream connection on the target, so both ends are ordinary
blocking sockets held by the test.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import (  # noqa: F401 (fixtures)
    ClusterProcess,
    free_ports,
    make_cluster_fixture,
)
from tests.support.fault_proxy import Cut, Direction, FaultProxy, ProxyLoop, Topology
from tests.support.raw_client import RawClient, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

IO_TIMEOUT_S = 10.0
# How long a test waits to be convinced that bytes are *not* coming.
QUIET_S = 0.3


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def loop() -> Iterator[ProxyLoop]:
    with ProxyLoop() as proxy_loop:
        yield proxy_loop


@pytest.fixture
def target() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT_S)
        yield listener


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def connect(proxy: FaultProxy, target: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client socket through the proxy and the target's side of it."""
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT_S)
    server, _ = target.accept()
    server.settimeout(IO_TIMEOUT_S)
    return client, server


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"closed after {len(data)} of {count} bytes"
        data += chunk
    return data


def nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(QUIET_S)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(IO_TIMEOUT_S)
    return False


def is_closed(sock: socket.socket) -> bool:
    """The peer closed or reset the connection (reads end or fail)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def refused(proxy: FaultProxy) -> bool:
    """A new connection to the proxy is reset, whether during connect() or just after."""
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT_S) as sock:
            return is_closed(sock)
    except ConnectionResetError:
        return True


def test_bytes_flow_both_ways_and_are_counted(loop: ProxyLoop, target: socket.socket) -> None:
    proxy = loop.proxy(address(target))
    client, server = connect(proxy, target)
    with client, server:
        payload = os.urandom(1 << 20)
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(server, len(payload)) == payload
        sender.join(IO_TIMEOUT_S)
        server.sendall(b"pong")
        assert recv_exactly(client, 4) == b"pong"
    stats = proxy.stats()
    assert stats.bytes_forward == len(payload)
    assert stats.bytes_backward == 4
    assert stats.connections_accepted == 1


def test_cut_resets_both_ends_refuses_new_ones_and_heal_restores(
    loop: ProxyLoop, target: socket.socket
) -> None:
    proxy = loop.proxy(address(target))
    client, server = connect(proxy, target)
    with client, server:
        proxy.cut()
        assert is_closed(client)
        assert is_closed(server)
    assert proxy.stats().connections_open == 0

    assert refused(proxy)
    assert proxy.stats().connections_refused == 1

    proxy.heal()
    client, server = connect(proxy, target)
    with client, server:
        client.sendall(b"again")
        assert recv_exactly(server, 5) == b"again"


def test_blackhole_holds_bytes_and_connections_until_healed(
    loop: ProxyLoop, target: socket.socket
) -> None:
    proxy = loop.proxy(address(target))
    client, server = connect(proxy, target)
    with client, server:
        proxy.cut(Cut.BLACKHOLE)
        client.sendall(b"held forward")
        server.sendall(b"held back")
        assert nothing_arrives(server)
        assert nothing_arrives(client)

        # A new connection is accepted but not passed on while cut.
        late = socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT_S)
        target.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            target.accept()
        target.settimeout(IO_TIMEOUT_S)

        proxy.heal()
        assert recv_exactly(server, 12) == b"held forward"
        assert recv_exactly(client, 9) == b"held back"
        late_server, _ = target.accept()
        with late, late_server:
            late.sendall(b"late")
            assert recv_exactly(late_server, 4) == b"late"


@pytest.mark.parametrize("blocked", list(Direction))
def test_one_way_block_holds_one_direction_while_the_other_flows(
    loop: ProxyLoop, target: socket.socket, blocked: Direction
) -> None:
    proxy = loop.proxy(address(target))
    client, server = connect(proxy, target)
    with client, server:
        proxy.block(blocked)
        sent_from, sent_to = (client, server) if blocked is Direction.FORWARD else (server, client)
        flowing_from, flowing_to = sent_to, sent_from
        sent_from.sendall(b"stuck")
        flowing_from.sendall(b"flows")
        assert recv_exactly(flowing_to, 5) == b"flows"
        assert nothing_arrives(sent_to)
        proxy.heal()
        assert recv_exactly(sent_to, 5) == b"stuck"


def test_delay_delivers_intact_and_no_sooner(loop: ProxyLoop, target: socket.socket) -> None:
    proxy = loop.proxy(address(target))
    client, server = connect(proxy, target)
    with client, server:
        proxy.delay(200)
        started = time.monotonic()
        client.sendall(b"slow")
        assert recv_exactly(server, 4) == b"slow"
        # A lower bound only: the proxy holds each chunk at least this long.
        assert time.monotonic() - started >= 0.2
        proxy.heal()
        client.sendall(b"fast")
        assert recv_exactly(server, 4) == b"fast"


def test_connections_are_bounded(loop: ProxyLoop, target: socket.socket) -> None:
    proxy = loop.proxy(address(target), connections_max=2)
    first = connect(proxy, target)
    second = connect(proxy, target)
    assert refused(proxy)
    assert proxy.stats().connections_refused == 1
    for sock in (*first, *second):
        sock.close()


def test_a_dead_target_closes_the_dialer(loop: ProxyLoop) -> None:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        dead = address(gone)
    proxy = loop.proxy(dead)
    assert refused(proxy)


def test_topology_routes_each_node_through_its_own_proxies() -> None:
    listeners = {n: socket.create_server(("127.0.0.1", 0)) for n in (1, 2, 3)}
    try:
        for listener in listeners.values():
            listener.settimeout(IO_TIMEOUT_S)
        with ProxyLoop() as loop:
            topology = Topology(loop, {n: address(s) for n, s in listeners.items()})
            peers = dict(item.split("=") for item in topology.peers_arg(1).split(","))
            assert peers["1"] == address(listeners[1])
            assert peers["2"] == topology.proxy(1, 2).address
            assert peers["3"] == topology.proxy(1, 3).address
            assert len(set(topology.peers_arg(2).split(",")) & set(peers.values())) == 0

            def link_works(frm: int, to: int) -> bool:
                """Connect through proxy (frm, to): either the target gets it or it is reset."""
                proxy = topology.proxy(frm, to)
                try:
                    c = socket.create_connection(("127.0.0.1", proxy.port), IO_TIMEOUT_S)
                except ConnectionResetError:
                    return False  # reset while connecting: the same cut, seen sooner
                with c:
                    listeners[to].settimeout(QUIET_S)
                    try:
                        server, _ = listeners[to].accept()
                    except TimeoutError:
                        assert is_closed(c)
                        return False
                    with server:
                        c.sendall(b"x")
                        return recv_exactly(server, 1) == b"x"

            topology.isolate(1)
            assert {pair for pair in topology.proxies if not link_works(*pair)} == {
                (1, 2),
                (2, 1),
                (1, 3),
                (3, 1),
            }
            topology.heal_all()
            topology.partition({1, 2}, {3})
            assert {pair for pair in topology.proxies if not link_works(*pair)} == {
                (1, 3),
                (3, 1),
                (2, 3),
                (3, 2),
            }
            topology.heal_all()
            topology.cut_one_way(2, 1)
            assert not link_works(2, 1)
            assert link_works(1, 2)
            topology.heal_all()
            assert all(link_works(*pair) for pair in topology.proxies)
    finally:
        for listener in listeners.values():
            listener.close()


def test_nothing_leaks() -> None:
    fds_before = open_fds()
    threads_before = threading.active_count()
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(IO_TIMEOUT_S)
        loop = ProxyLoop().start()
        proxies = [loop.proxy(address(target)) for _ in range(3)]
        held = []
        for proxy in proxies:
            client, server = connect(proxy, target)
            client.sendall(b"x")
            assert recv_exactly(server, 1) == b"x"
            held += [client, server]
        proxies[0].cut(Cut.BLACKHOLE)
        proxies[1].block(Direction.BACKWARD)
        proxies[2].delay(50)
        assert loop.tasks() > 0
        for proxy in proxies:
            proxy.close()
        assert loop.tasks() == 0, "every connection task ended"
        loop.close()
        assert not loop.thread.is_alive()
        for sock in held:
            sock.close()
    assert threading.active_count() == threads_before
    assert open_fds() == fds_before


# The proxies between real nodes, through the cluster harness.


def clustering_wired(cluster: ClusterProcess) -> bool:
    return "clustering is not wired" not in cluster.outputs()


@pytest.mark.timeout(120)
def test_a_proxied_cluster_routes_every_node_through_its_proxies(
    make_cluster: Callable[..., ClusterProcess],
) -> None:
    cluster = make_cluster(nodes=3, proxies=True)
    assert cluster.topology is not None
    pids = [cluster.node(n).pid for n in cluster.node_ids]
    for node in cluster.node_ids:
        args = cluster.args(node)
        peers = dict(item.split("=") for item in args[args.index("--peers") + 1].split(","))
        assert peers[str(node)] == cluster.peer_address(node)
        for other in cluster.node_ids:
            if other != node:
                assert peers[str(other)] == cluster.topology.proxy(node, other).address
        assert cluster.describe(node).node_id == node

    cluster.pause(2)
    cluster.resume(2)
    assert cluster.describe(2).node_id == 2
    cluster.restart(3)
    assert cluster.node(3).pid not in pids
    assert cluster.describe(3).node_id == 3
    cluster.kill(1)
    cluster.start_node(1)
    assert cluster.describe(1).node_id == 1

    cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(180)
def test_an_isolated_node_is_seen_dead_and_rejoins_when_healed(
    make_cluster: Callable[..., ClusterProcess],
) -> None:
    cluster = make_cluster(nodes=3, proxies=True)
    if not clustering_wired(cluster):
        pytest.skip("weir serve does not act on --peers yet")
    assert cluster.topology is not None
    cluster.wait_converged()
    before = cluster.topology.stats()
    assert all(s.bytes_forward > 0 for s in before.values()), "peer traffic uses the proxies"

    cluster.isolate(1)
    cluster.wait_until(
        lambda: not cluster.sees_all_alive(2, [1]) and not cluster.sees_all_alive(1, [2, 3]),
        what="node 1 and the others seeing each other dead",
    )
    cluster.wait_converged(among=[2, 3])
    cluster.heal()
    cluster.wait_converged()


@pytest.mark.timeout(180)
def test_a_paused_node_is_seen_dead_and_rejoins_when_resumed(
    make_cluster: Callable[..., ClusterProcess],
) -> None:
    cluster = make_cluster(nodes=3)
    if not clustering_wired(cluster):
        pytest.skip("weir serve does not act on --peers yet")
    cluster.wait_converged()
    cluster.pause(3)
    cluster.wait_until(lambda: not cluster.sees_all_alive(1, [3]), what="node 3 seen dead")
    cluster.resume(3)
    cluster.wait_converged()


@pytest.mark.timeout(120)
def test_the_harness_retries_with_new_ports_when_one_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        picks: list[list[int]] = []

        def pick(count: int) -> list[int]:
            ports = free_ports(count)
            if not picks:
                ports[0] = taken  # node 1's client port, on the first attempt only
            picks.append(ports)
            return ports

        cluster = ClusterProcess(tmp_path, nodes=1, pick_ports=pick)
        with cluster:
            assert len(picks) == 2
            assert cluster.address(1) == f"127.0.0.1:{picks[1][0]}"
            assert cluster.describe(1).node_id == 1


@pytest.mark.timeout(120)
def test_grpc_calls_cross_the_proxy_fail_while_cut_and_work_after_heal(
    broker: BrokerProcess, loop: ProxyLoop
) -> None:
    """HTTP/2 passes through intact, and a cut looks to gRPC like a lost peer."""
    proxy = loop.proxy(broker.address)
    with RawClient(proxy.address) as client:
        client.create_topic("through")
        response = client.produce_one(request("through", [b"a", b"b"]))
        assert response.appends[0].base_offset == 0
        proxy.cut()
        with pytest.raises(grpc.RpcError) as failed:
            client.end_offsets("through")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        proxy.heal()
        # gRPC reconnects with backoff: retry until it is back.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert client.end_offsets("through") == [2]
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "no reconnect after heal"
                time.sleep(0.2)
    stats = proxy.stats()
    assert stats.bytes_forward > 0 and stats.bytes_backward > 0
