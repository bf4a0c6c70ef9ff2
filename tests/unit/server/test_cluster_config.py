"""`weir serve` settings: cluster membership, flags, WEIR_* variables and their precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weir.cluster.storage import Durability
from weir.server.cli import build_parser
from weir.server.cli_serve import ServeSetting, serve_config, serve_settings
from weir.server.config import NodeConfig, format_peers, parse_peers

PEERS = "1=10.0.0.1:7170,2=10.0.0.2:7170,3=10.0.0.3:7170"


def config(argv: list[str], environ: dict[str, str] | None = None) -> NodeConfig:
    args = build_parser().parse_args(["serve", *argv])
    return serve_config(args, environ or {})


# -- NodeConfig ----------------------------------------------------------------


def test_without_peers_a_node_runs_alone() -> None:
    node = NodeConfig(data_dir=Path("."))
    assert (node.peers, node.peer_listen, node.cluster_id) == ((), "", "weir")
    assert not node.clustered


def test_peers_parse_sorted_and_round_trip() -> None:
    peers = parse_peers(" 3=c:7172, 1=[::1]:7170 ,2=b.example:7171,")
    assert peers == ((1, "[::1]:7170"), (2, "b.example:7171"), (3, "c:7172"))
    assert parse_peers(format_peers(peers)) == peers
    assert parse_peers("") == ()


def test_peer_listen_defaults_to_own_entry() -> None:
    node = NodeConfig(data_dir=Path("."), node_id=2, peers=parse_peers(PEERS))
    assert node.clustered
    assert node.peer_listen == "10.0.0.2:7170"
    explicit = NodeConfig(
        data_dir=Path("."), node_id=2, peers=parse_peers(PEERS), peer_listen="0.0.0.0:7170"
    )
    assert explicit.peer_listen == "0.0.0.0:7170"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"node_id": 4, "peers": PEERS}, "node id 4 is not among the peers [1, 2, 3]"),
        ({"peers": "1=a:1,1=b:2"}, "peer ids must be distinct"),
        ({"node_id": 1, "peers": "0=a:1,1=b:2"}, "peer ids must be at least 1"),
        ({"peers": ((1, "a:1"), (2, "b"))}, "peer 2's address must be HOST:PORT"),
        ({"peers": ((1, "a:1"), (2, "b:0"))}, "peer 2's address port must be between 1 and"),
        ({"peers": ((1, "a:1"), (2, ":7"))}, "must be HOST:PORT"),
        ({"peers": ((1, "a:1"), (2, "b:99999"))}, "port must be between"),
        ({"peer_listen": "0.0.0.0:7170"}, "peer listen address given without peers"),
        ({"peers": "1=a:1", "peer_listen": "a b:1"}, "peer listen address must be HOST:PORT"),
        ({"peers": "1=127.0.0.1:7070"}, "peer listen address and listen are both"),
        ({"listen": "7070"}, "listen must be HOST:PORT"),
        ({"listen": "host:port"}, "listen must be HOST:PORT"),
        ({"advertised_address": "h:0"}, "advertised address port must be between 1"),
        ({"cluster_id": ""}, "cluster id must be"),
        ({"cluster_id": "a b"}, "cluster id must be"),
        ({"cluster_id": "x" * 64}, "cluster id must be"),
        ({"cluster_id": "-x"}, "cluster id must be"),
    ],
)
def test_invalid_cluster_settings_are_refused(settings: dict[str, object], message: str) -> None:
    if isinstance(settings.get("peers"), str):
        settings["peers"] = parse_peers(str(settings["peers"]))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        NodeConfig(data_dir=Path("."), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", "ID=HOST:PORT"),
        ("x=a:1", "ID=HOST:PORT"),
        ("1:a:1", "ID=HOST:PORT"),
        ("=a:1", "ID=HOST:PORT"),
        ("-1=a:1", "ID=HOST:PORT"),
        ("1=a:1,2=b", "peer 2's address must be HOST:PORT"),
        ("1=a:1,2=", "peer 2's address must be HOST:PORT"),
        ("1=a b:1", "peer 1's address must be HOST:PORT"),
    ],
)
def test_malformed_peer_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_peers(text)


def test_unsorted_peers_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        NodeConfig(data_dir=Path("."), peers=((2, "b:1"), (1, "a:1")))


# -- flags and environment -------------------------------------------------------


def test_defaults() -> None:
    node = config([])
    assert node == NodeConfig(data_dir=Path("./data"))


def test_cluster_flags() -> None:
    node = config(
        [
            "--node-id",
            "3",
            "--peers",
            PEERS,
            "--peer-listen",
            "0.0.0.0:7170",
            "--cluster-id",
            "prod-eu.1",
            "--listen",
            "0.0.0.0:7070",
            "--advertised-address",
            "10.0.0.3:7070",
            "--data-dir",
            "/var/lib/weir",
            "--durability",
            "async",
        ]
    )
    assert node.node_id == 3
    assert node.peers == parse_peers(PEERS)
    assert node.peer_listen == "0.0.0.0:7170"
    assert node.cluster_id == "prod-eu.1"
    assert (node.listen, node.advertised_address) == ("0.0.0.0:7070", "10.0.0.3:7070")
    assert node.data_dir == Path("/var/lib/weir")
    assert node.durability is Durability.ASYNC


def test_every_setting_has_an_environment_variable() -> None:
    environ = {
        "WEIR_NODE_ID": "2",
        "WEIR_PEERS": PEERS,
        "WEIR_PEER_LISTEN": "0.0.0.0:7170",
        "WEIR_CLUSTER_ID": "blue",
        "WEIR_LISTEN": "0.0.0.0:7070",
        "WEIR_ADVERTISED_ADDRESS": "10.0.0.2:7070",
        "WEIR_DATA_DIR": "/srv/weir",
        "WEIR_DURABILITY": "async",
        "WEIR_CALLS_MAX": "99",
        "WEIR_SHUTDOWN_GRACE_MS": "1234",
    }
    node = config([], environ)
    assert node.node_id == 2
    assert node.peers == parse_peers(PEERS)
    assert (node.peer_listen, node.cluster_id) == ("0.0.0.0:7170", "blue")
    assert (node.listen, node.advertised_address) == ("0.0.0.0:7070", "10.0.0.2:7070")
    assert node.data_dir == Path("/srv/weir")
    assert node.durability is Durability.ASYNC
    assert (node.calls_max, node.shutdown_grace_ms) == (99, 1234)


def test_every_flag_is_named_like_its_variable() -> None:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {o for action in serve._actions for o in action.option_strings} - {"-h", "--help"}
    settings = serve_settings()
    assert flags == {s.flag for s in settings}
    for setting in settings:
        assert setting.env == "WEIR_" + setting.flag[2:].replace("-", "_").upper()


@pytest.mark.parametrize(
    "setting",
    [s for s in serve_settings() if isinstance(s.default, int)],
    ids=lambda s: str(s.env),
)
def test_every_limit_is_read_from_the_environment(setting: ServeSetting) -> None:
    assert isinstance(setting.default, int)
    # One more than the default keeps every limit consistent with the others.
    value = setting.default + 1
    node = config([], {setting.env: f" {value} "})
    assert getattr(node, setting.name) == value


def test_a_flag_wins_over_the_environment() -> None:
    environ = {"WEIR_NODE_ID": "2", "WEIR_PEERS": PEERS, "WEIR_CALLS_MAX": "99"}
    node = config(["--node-id", "3", "--calls-max", "77"], environ)
    assert (node.node_id, node.calls_max) == (3, 77)
    assert node.peer_listen == "10.0.0.3:7170"


def test_an_empty_variable_counts_as_unset() -> None:
    node = config([], {"WEIR_PEERS": "", "WEIR_ADVERTISED_ADDRESS": "", "WEIR_NODE_ID": ""})
    assert (node.peers, node.advertised_address, node.node_id) == ((), "", 1)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {"WEIR_NODE_ID": "one"}, "WEIR_NODE_ID must be an integer, not 'one'"),
        ([], {"WEIR_CALLS_MAX": "1e3"}, "WEIR_CALLS_MAX must be an integer"),
        ([], {"WEIR_DURABILITY": "fast"}, "WEIR_DURABILITY must be one of sync, async"),
        ([], {"WEIR_PEERS": "1=a:1;2=b:2"}, "WEIR_PEERS: peer 1's address must be HOST:PORT"),
        ([], {"WEIR_PEERS": "1=a:1,2=b:0"}, "WEIR_PEERS: peer 2's address port must be"),
        (["--peers", "a:1"], {}, "--peers: peers must be ID=HOST:PORT"),
        ([], {"WEIR_NODE_ID": "0"}, "node_id must be positive"),
        ([], {"WEIR_CALLS_MAX": "-5"}, "calls_max must be positive"),
    ],
)
def test_bad_settings_name_their_source(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config(argv, environ)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--node-id", "4", "--peers", PEERS], {}, "node id 4 is not among the peers"),
        ([], {"WEIR_CLUSTER_ID": "no spaces"}, "cluster id must be"),
        ([], {"WEIR_PEERS": "1=a:1,2=b"}, "peer 2's address must be HOST:PORT"),
    ],
)
def test_weir_serve_refuses_with_one_error_line_and_exit_2(
    argv: list[str], environ: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weir.server.cli", "serve", "--data-dir", str(tmp_path), *argv],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: invalid setting: ")
    assert message in line
    # Nothing was created: the node refused before touching its data folder.
    assert list(tmp_path.iterdir()) == []


def test_operations_doc_lists_every_key() -> None:
    """docs/operations.md's configuration table names every flag and its variable."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    table = doc[doc.index("## Configuration keys") :]
    missing = [
        f"{s.flag} / {s.env}"
        for s in serve_settings()
        if f"`{s.flag}`" not in table or f"`{s.env}`" not in table
    ]
    assert missing == []
