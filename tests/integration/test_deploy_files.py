"""The files in deploy/ are not fiction: each starts three real nodes.

No container engine or init system runs on the test machines, so each test
reads a deploy file (the compose file, the Kubernetes StatefulSet, the
systemd template with its per-node environment files, the local script) and
starts three `weir serve` processes on loopback with exactly the command
and environment the file declares. Only what a machine or a container would
provide is substituted: host names and ports become 127.0.0.1 and free
ports, data folders become temporary ones, and the `weir` executable is this
checkout's. Then every node must have parsed its configuration (node id,
peers, advertised address) and must answer gRPC health SERVING.

The nodes form a real Raft cluster (issue 6): every node must then report,
through `weir cluster status`, all three nodes alive at the addresses they
advertise. `CLUSTER_WIRED` keeps the older check (each node said it served
alone) readable next to the new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# The multi-Raft host is wired into `weir serve` (issue 6): the tests also
# require every node to report all three nodes alive.
CLUSTER_WIRED = True

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
CLUSTER_FORMED_TIMEOUT_S = 30.0
NOT_WIRED = "clustering is not wired into this node yet"
_READY = re.compile(r"weir serve: listening on (\S+:\d+) \(node (\d+),")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def localize(value: str, addresses: dict[str, str]) -> str:
    """`value` with each declared HOST:PORT (or path) of `addresses` replaced."""
    for declared in sorted(addresses, key=len, reverse=True):
        value = re.sub(
            r"(?<![\w.-])" + re.escape(declared) + r"(?![\w.-])",
            lambda _m, declared=declared: addresses[declared],
            value,
        )
    return value


@dataclasses.dataclass
class RunningNode:
    """A process started from a deploy file's declaration."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    address: str = ""
    node_id: int = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = _READY.search(self.output())
            if match:
                self.address, self.node_id = match.group(1), int(match.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
            raise


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """`weir` and `weir-healthcheck` as a machine or an image would have them on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {
        "weir": f'exec {shlex.quote(sys.executable)} -m weir.server.cli "$@"',
        "weir-healthcheck": (
            f"exec {shlex.quote(sys.executable)} "
            f'{shlex.quote(str(DEPLOY / "weir-healthcheck"))} "$@"'
        ),
    }
    for name, line in shims.items():
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{line}\n")
        shim.chmod(0o755)
    return bin_dir


@pytest.fixture
def nodes() -> Iterator[list[RunningNode]]:
    started: list[RunningNode] = []
    try:
        yield started
    finally:
        codes = [node.stop() for node in started]
    assert codes == [0] * len(started), "every node stops cleanly on SIGTERM"


def start(
    nodes: list[RunningNode],
    name: str,
    command: list[str],
    environ: dict[str, str],
    bin_dir: Path,
    log_dir: Path,
) -> RunningNode:
    log = log_dir / f"{name}.log"
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        **environ,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    node = RunningNode(name, proc, log)
    nodes.append(node)
    return node


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    status: int = response.status
    return status


def cluster_status(bin_dir: Path, address: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(bin_dir / "weir"), "--json", "--bootstrap", address, "cluster", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def check_nodes(
    started: list[RunningNode],
    bin_dir: Path,
    expected: dict[str, tuple[int, str, str]],
) -> None:
    """Every node runs as node `id`, answers on `address`, advertises `advertised`."""
    for node in started:
        node.wait_ready()
    for node in started:
        node_id, address, advertised = expected[node.name]
        assert (node.node_id, node.address) == (node_id, address), node.output()
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        assert health_status(address, "weir.v1.BrokerService") == (
            health_pb2.HealthCheckResponse.SERVING
        )
        status = cluster_status(bin_dir, address)
        assert status["node_id"] == node_id
        own = {n["node_id"]: n["address"] for n in status["nodes"]}
        assert own[node_id] == advertised
    if not CLUSTER_WIRED:
        # What is true today: each node parsed its peers and says it serves alone.
        for node in started:
            assert NOT_WIRED in node.output(), node.output()
        return
    # ---- Once the host is wired into server/ (issue 6) -----------------------
    # Every node reports the whole cluster: the three founding members, alive,
    # each at the address it advertises.
    members = {node_id: advertised for node_id, _, advertised in expected.values()}
    deadline = time.monotonic() + CLUSTER_FORMED_TIMEOUT_S
    for node in started:
        while True:
            status = cluster_status(bin_dir, node.address)
            seen = {n["node_id"]: (n["address"], n["alive"]) for n in status["nodes"]}
            if seen == {i: (a, True) for i, a in members.items()}:
                break
            assert time.monotonic() < deadline, f"{node.name} sees {seen}"
            time.sleep(0.2)
        assert NOT_WIRED not in node.output()


# -- docker compose --------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    with (DEPLOY / "compose" / "compose.yaml").open() as f:
        compose: dict[str, Any] = yaml.safe_load(f)
    return compose


def test_compose_starts_three_nodes(
    tmp_path: Path, bin_dir: Path, nodes: list[RunningNode]
) -> None:
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    assert len(services) == 3
    ports = {name: (free_port(), free_port()) for name in services}
    expected: dict[str, tuple[int, str, str]] = {}
    for name, service in services.items():
        client_port, peer_port = ports[name]
        (volume,) = service["volumes"]
        volume_name, mount = volume.split(":")
        (published,) = service["ports"]
        host_side, container_port = published.rsplit(":", 1)
        container_ports = {"7070": client_port, "7170": peer_port}
        assert container_port == "7070"
        addresses = {
            # Inside its container a node binds any address, or loopback.
            f"0.0.0.0:{port}": f"127.0.0.1:{local}"
            for port, local in container_ports.items()
        }
        addresses |= {f"127.0.0.1:{port}": f"127.0.0.1:{p}" for port, p in container_ports.items()}
        # Other services by their host name on the compose network.
        for other, (other_client, other_peer) in ports.items():
            hostname = services[other].get("hostname", other)
            addresses[f"{hostname}:7070"] = f"127.0.0.1:{other_client}"
            addresses[f"{hostname}:7170"] = f"127.0.0.1:{other_peer}"
        # The published port, as clients on the Docker host reach the node.
        addresses[host_side] = f"127.0.0.1:{client_port}"
        addresses[mount] = str(tmp_path / volume_name)
        environ = {k: localize(str(v), addresses) for k, v in service["environment"].items()}
        assert set(environ) >= {"WEIR_NODE_ID", "WEIR_PEERS", "WEIR_CLUSTER_ID"}
        # Only WEIR_* settings: no flags on the command line.
        assert service["command"] == ["weir", "serve"]
        start(nodes, name, service["command"], environ, bin_dir, tmp_path)
        expected[name] = (
            int(environ["WEIR_NODE_ID"]),
            f"127.0.0.1:{client_port}",
            environ["WEIR_ADVERTISED_ADDRESS"],
        )
        service["_addresses"] = addresses
    check_nodes(nodes, bin_dir, expected)
    assert sorted(i for i, _, _ in expected.values()) == [1, 2, 3]
    # The declared healthcheck command works against each node.
    for service in services.values():
        kind, *command = service["healthcheck"]["test"]
        assert kind == "CMD"
        command = [localize(part, service["_addresses"]) for part in command]
        result = subprocess.run(
            [str(bin_dir / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "SERVING" in result.stdout


def test_compose_image_runs_what_compose_declares() -> None:
    """The Dockerfile's command, files and healthcheck are those compose relies on."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    compose = load_compose()
    (cmd,) = re.findall(r"^CMD (.*)$", dockerfile, re.MULTILINE)
    for service in compose["services"].values():
        assert json.loads(cmd) == service["command"]
        build = service["build"]
        assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
    for source in re.findall(r"^COPY (?!--from)(.*) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), f"the Dockerfile copies {path}, which is missing"
    assert "/usr/local/bin/weir-healthcheck" in dockerfile


# -- Kubernetes ------------------------------------------------------------------


def load_kubernetes() -> dict[str, dict[str, Any]]:
    """Every object under deploy/kubernetes, by `Kind/name`."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def expand_kubernetes(text: str, environ: dict[str, str]) -> str:
    """Kubernetes' own expansion of command and args: $(VAR) of the container's env; $$ is $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return environ.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def test_statefulset_starts_three_nodes(
    tmp_path: Path, bin_dir: Path, nodes: list[RunningNode]
) -> None:
    objects = load_kubernetes()
    sts = objects["StatefulSet/weir"]
    spec = sts["spec"]
    headless = objects[f"Service/{spec['serviceName']}"]
    (container,) = spec["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (mount,) = container["volumeMounts"]
    replicas = spec["replicas"]
    assert replicas == 3
    namespace = "default"
    ports = [(free_port(), free_port()) for _ in range(replicas)]
    expected: dict[str, tuple[int, str, str]] = {}
    for ordinal in range(replicas):
        pod = f"{sts['metadata']['name']}-{ordinal}"
        client_port, peer_port = ports[ordinal]
        local = {"client": client_port, "peer": peer_port}
        addresses = {f"0.0.0.0:{container_ports[n]}": f"127.0.0.1:{p}" for n, p in local.items()}
        for other in range(replicas):
            dns = f"{sts['metadata']['name']}-{other}.{headless['metadata']['name']}"
            for port_name, port in container_ports.items():
                other_port = ports[other][0 if port_name == "client" else 1]
                addresses[f"{dns}:{port}"] = f"127.0.0.1:{other_port}"
        addresses[mount["mountPath"]] = str(tmp_path / f"data-{pod}")
        environ: dict[str, str] = {}
        for var in container["env"]:
            if "valueFrom" in var:
                assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
                environ[var["name"]] = namespace
            else:
                environ[var["name"]] = expand_kubernetes(
                    localize(str(var["value"]), addresses), environ
                )
        # What the kubelet provides: the pod's name as its host name.
        environ["HOSTNAME"] = pod
        command = [expand_kubernetes(part, environ) for part in container["command"]]
        start(nodes, pod, command, environ, bin_dir, tmp_path)
        # The shell command derives both from the ordinal: weir-0 is node 1.
        expected[pod] = (
            ordinal + 1,
            f"127.0.0.1:{client_port}",
            f"{pod}.{headless['metadata']['name']}.{namespace}.svc:{container_ports['client']}",
        )
    check_nodes(nodes, bin_dir, expected)
    # Each node's own entry in WEIR_PEERS is the pod's peer DNS name.
    peers = dict(item.split("=") for item in _env(container)["WEIR_PEERS"].split(","))
    for ordinal in range(replicas):
        assert peers[str(ordinal + 1)] == (
            f"weir-{ordinal}.{headless['metadata']['name']}:{container_ports['peer']}"
        )


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: str(v["value"]) for v in container["env"] if "value" in v}


def test_kubernetes_objects_fit_together() -> None:
    objects = load_kubernetes()
    sts = objects["StatefulSet/weir"]
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["podManagementPolicy"] == "Parallel"
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _env(container)
    assert env["WEIR_LISTEN"] == f"0.0.0.0:{ports['client']}"
    assert env["WEIR_PEER_LISTEN"] == f"0.0.0.0:{ports['peer']}"
    # Probes ask gRPC health on the client port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["client"], probe
    # The headless Service gives every pod a peer DNS name, ready or not.
    headless = objects[f"Service/{spec['serviceName']}"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in headless["spec"]["ports"]} == set(ports)
    client = objects["Service/weir"]
    assert client["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in client["spec"]["ports"]] == ["client"]
    pdb = objects["PodDisruptionBudget/weir"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (claim,) = spec["volumeClaimTemplates"]
    assert container["volumeMounts"][0]["name"] == claim["metadata"]["name"]
    assert env["WEIR_DATA_DIR"].startswith(container["volumeMounts"][0]["mountPath"] + "/")


# -- systemd ---------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file (a key may repeat, as systemd allows)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def read_env_file(path: Path) -> dict[str, str]:
    environ = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environ[key] = value
    return environ


def test_systemd_template_starts_three_nodes(
    tmp_path: Path, bin_dir: Path, nodes: list[RunningNode]
) -> None:
    unit = read_unit(DEPLOY / "systemd" / "weir@.service")
    (exec_start,) = unit["ExecStart"]
    (env_file,) = unit["EnvironmentFile"]
    (state_dir,) = unit["StateDirectory"]
    command = shlex.split(exec_start)
    assert command[1:] == ["serve"], "settings come from the environment file only"
    instances = sorted(
        int(m.group(1))
        for p in (DEPLOY / "systemd").glob("node-*.env")
        if (m := re.fullmatch(r"node-(\d+)\.env", p.name))
    )
    assert instances == [1, 2, 3]
    ports = {i: (free_port(), free_port()) for i in instances}
    expected: dict[str, tuple[int, str, str]] = {}
    for i in instances:
        path = Path(env_file.replace("%i", str(i)))
        declared = read_env_file(DEPLOY / "systemd" / path.name)
        # The data folder is the one systemd creates for the instance.
        assert declared["WEIR_DATA_DIR"] == "/var/lib/" + state_dir.replace("%i", str(i))
        addresses = {
            "0.0.0.0:7070": f"127.0.0.1:{ports[i][0]}",
            "0.0.0.0:7170": f"127.0.0.1:{ports[i][1]}",
            declared["WEIR_DATA_DIR"]: str(tmp_path / f"node-{i}"),
        }
        for other, (client_port, peer_port) in ports.items():
            host = f"weir-{other}.example.internal"
            addresses[f"{host}:7070"] = f"127.0.0.1:{client_port}"
            addresses[f"{host}:7170"] = f"127.0.0.1:{peer_port}"
        environ = {k: localize(v, addresses) for k, v in declared.items()}
        assert environ["WEIR_NODE_ID"] == str(i)
        name = f"weir@{i}"
        start(nodes, name, [str(bin_dir / "weir"), *command[1:]], environ, bin_dir, tmp_path)
        expected[name] = (i, f"127.0.0.1:{ports[i][0]}", f"127.0.0.1:{ports[i][0]}")
    check_nodes(nodes, bin_dir, expected)


# -- the local script (make run) -------------------------------------------------


def consecutive_free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are free now."""
    for _ in range(100):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise AssertionError("no run of free ports")


def test_local_script_starts_and_stops_three_nodes(tmp_path: Path, bin_dir: Path) -> None:
    script = DEPLOY / "local" / "weir-cluster"
    client_base, peer_base = consecutive_free_ports(3), consecutive_free_ports(3)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:/usr/bin:/bin",
        WEIR=str(bin_dir / "weir"),
        DATA=str(tmp_path / "data"),
        CLIENT_PORT=str(client_base),
        PEER_PORT=str(peer_base),
        DURABILITY="async",
    )

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), action], env=env, capture_output=True, text=True, timeout=60
        )

    started = run("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for i in range(3):
            assert f"node {i + 1}: clients 127.0.0.1:{client_base + i}" in started.stdout
            address = f"127.0.0.1:{client_base + i}"
            assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
            assert cluster_status(bin_dir, address)["node_id"] == i + 1
            log = (tmp_path / "data" / f"node-{i + 1}" / "weir.log").read_text()
            assert (NOT_WIRED in log) is not CLUSTER_WIRED
        status = run("status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(": running") == 3
        # A second start refuses rather than fighting over the data folders.
        again = run("start")
        assert again.returncode == 2
        assert "already runs" in again.stderr
        pids = [int((tmp_path / "data" / f"node-{i}" / "weir.pid").read_text()) for i in (1, 2, 3)]
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.count("stopped") == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    status = run("status")
    assert status.returncode == 1
    assert status.stdout.count(": stopped") == 3


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
