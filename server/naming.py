"""Validation of user-chosen names (topics, consumer groups)."""

from __future__ import annotations

import re

from weir.server.errors import invalid
from weir.types import TOPIC_NAME_CHARS_MAX

__all__ = ["GROUP_NAME_CHARS_MAX", "TOPIC_NAME_CHARS_MAX", "check_group_name", "check_topic_name"]

GROUP_NAME_CHARS_MAX = 255
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_topic_name(name: str) -> None:
    """Kafka's rule: 1..249 of [A-Za-z0-9._-], and not "." or ".."."""
    if (
        not name
        or len(name) > TOPIC_NAME_CHARS_MAX
        or name in (".", "..")
        or _TOPIC_NAME.fullmatch(name) is None
    ):
        raise invalid(
            "INVALID_TOPIC_NAME",
            f"invalid topic name {name[:TOPIC_NAME_CHARS_MAX]!r}: use 1 to "
            f"{TOPIC_NAME_CHARS_MAX} characters from [A-Za-z0-9._-], not '.' or '..'",
            topic=name[:TOPIC_NAME_CHARS_MAX],
        )


def check_group_name(name: str) -> None:
    """Group names: 1..255 printable characters without NUL (empty = no group)."""
    if len(name) > GROUP_NAME_CHARS_MAX or not name.isprintable():
        raise invalid(
            "INVALID_GROUP_NAME",
            f"invalid group name: use 1 to {GROUP_NAME_CHARS_MAX} printable characters",
        )
