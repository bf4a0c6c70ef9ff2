"""Scripted interaction tests in the style of etcd/raft's `testdata/*.txt`.

A script is a sequence of blocks:

    command args...
    ----
    expected output lines

Commands drive an `Env` (see `run_command`; `tick N K` ticks node N K
times and then delivers, `elapse N K` delivers after each tick); the output is the trace of every
message exchanged until the cluster is quiet, then anything the command
reports. Set `WEIR_REWRITE=1` to rewrite the expected outputs from the
current behaviour and review the change as a diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weir.cluster.raft import Message, MessageType

from .env import Env


def format_message(m: Message) -> str:
    out = f"{m.frm}->{m.to} {m.type.name} term={m.term}"
    if m.type in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
        out += f" last={m.index}/{m.log_term}"
    elif m.type is MessageType.APPEND_RESP:
        out += f" index={m.index}"
    if m.entries:
        out += " entries=[" + " ".join(f"{e.index}/{e.term}" for e in m.entries) + "]"
    if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
        out += f" commit={m.commit}"
    if m.reject:
        out += f" REJECT hint={m.hint_index}/{m.hint_term}"
    if m.snapshot is not None:
        out += f" snapshot={m.snapshot.meta.index}/{m.snapshot.meta.term}"
    if m.transfer:
        out += " transfer"
    return out


def status(env: Env) -> list[str]:
    lines = []
    for i in sorted(env.nodes):
        r = env.raft(i)
        lines.append(
            f"{i}: {r.role.name} term={r.term} leader={r.leader} "
            f"first={r.log.first_index()} last={r.log.last_index()} commit={r.log.committed}"
        )
    return lines


def run_command(env: Env, words: list[str]) -> list[str]:
    name, args = words[0], [int(w) if w.isdigit() else w for w in words[1:]]
    out: list[str] = []
    if name == "campaign":
        env.nodes[int(args[0])].campaign()
    elif name == "propose":
        out.append(f"result: {env.nodes[int(args[0])].propose(str(args[1]).encode())}")
    elif name == "tick":
        env.tick(int(args[0]), int(args[1]) if len(args) > 1 else 1)
    elif name == "elapse":
        # Ticks one node repeatedly, delivering everything after each tick.
        trace: list[str] = []
        for _ in range(int(args[1])):
            env.tick(int(args[0]))
            trace += [format_message(m) for m in env.stabilize()]
            trace += [f"dropped {format_message(m)}" for m in env.dropped]
            env.dropped.clear()
        return trace
    elif name == "isolate":
        env.isolate(int(args[0]))
    elif name == "heal":
        env.heal()
    elif name == "transfer":
        out.append(f"result: {env.nodes[int(args[0])].transfer_leadership(int(args[1]))}")
    elif name == "compact":
        node = env.nodes[int(args[0])]
        node.compact(int(args[1]), f"state@{args[1]}".encode())
    elif name == "status":
        return status(env)
    else:
        raise ValueError(f"unknown command {name!r}")
    trace = [format_message(m) for m in env.stabilize()]
    trace += [f"dropped {format_message(m)}" for m in env.dropped]
    env.dropped.clear()
    return trace + out


def run_script(path: Path, rewrite: bool) -> None:
    blocks = path.read_text().strip().split("\n\n")
    header, *rest = blocks
    env = Env(**_options(header))
    rewritten = [header]
    for block in rest:
        lines = block.splitlines()
        cut = lines.index("----") if "----" in lines else len(lines)
        command, expected = "\n".join(lines[:cut]), "\n".join(lines[cut + 1 :])
        if command.startswith("#"):
            rewritten.append(block)
            continue
        got = run_command(env, command.split())
        text = "\n".join(got) if got else "ok"
        if not rewrite:
            assert text == expected.strip(), (
                f"{path.name}: `{command}` produced:\n{text}\n\nexpected:\n{expected}\n"
                f"(WEIR_REWRITE=1 .venv/bin/pytest {__file__.rsplit('/', 1)[0]} rewrites)"
            )
        rewritten.append(f"{command}\n----\n{text}")
    if rewrite:
        path.write_text("\n\n".join(rewritten) + "\n")


def _options(header: str) -> dict[str, Any]:
    """The first block configures the cluster: `nodes 1 2 3` and `key=value` options."""
    options: dict[str, Any] = {}
    for line in header.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "nodes":
            options["ids"] = [int(w) for w in words[1:]]
        else:
            key, _, value = words[0].partition("=")
            options[key] = value == "true" if value in ("true", "false") else int(value)
    return options
