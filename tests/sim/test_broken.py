"""The checker can fail: each deliberately broken variant is caught within the seed budget."""

from __future__ import annotations

import pytest

from .pool import run_chunk, sweep
from .test_sim import ONE_SEED

# The CI budget, whatever WEIR_SIM_SEEDS says: a sweep stops at the first catch.
CI_SEEDS = 10_000
# The same for the multi-group hosts (test_sim.py runs this many host seeds).
HOST_CI_SEEDS = 1_500


@pytest.mark.sim
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("variant", "scenario", "expect"),
    [
        # §5.4.2 / Figure 8: needs old-term entries left on minorities.
        ("CommitsPreviousTermByCount", "figure8", "leader completeness"),
        # §5.4.1: a stale candidate wins and overwrites committed entries.
        ("VotesWithoutLogCheck", None, "leader completeness"),
        # §5.2 / Figure 2 "persistent state": a restarted node votes again.
        ("ForgetsVote", None, "without its vote"),
        # Thesis §4.2.3: a follower in a lease must ignore pre-votes too.
        ("PreVoteIgnoresLease", None, "lease: node"),
        # Thesis §9.6: a pre-vote never changes anybody's term.
        ("PreVoteBumpsTerm", None, "on PRE_VOTE"),
        # Thesis §6.2: a leader cut off from its quorum steps down.
        ("NoCheckQuorumStepDown", None, "check quorum:"),
        # Thesis §6.2 at every tick: a cut-off leader ends within one election timeout.
        ("ChecksQuorumOncePerTimeout", None, "check quorum:"),
        # Thesis §4.1 with our apply-time rule: a change takes effect when applied.
        ("ConfigAppliedAtAppend", "membership", "configuration: node"),
        # Thesis §3.10: a transfer that does not finish in a timeout is abandoned.
        ("TransferNeverAbandoned", "transfer", "still transfers"),
    ],
)
def test_broken_variant_is_caught(variant: str, scenario: str | None, expect: str) -> None:
    if ONE_SEED is not None:
        seeds = f"seed {ONE_SEED}"
        failures = run_chunk([int(ONE_SEED)], variant, scenario)
        print("\n".join(failures))  # the report, for `pytest -s` when reproducing
    else:
        seeds = f"{CI_SEEDS} seeds"
        failures = sweep(range(CI_SEEDS), variant, scenario, stop_at_first=True)
    assert failures, f"{variant} survived {seeds}"
    assert expect in failures[0]
    assert "reproduce: WEIR_SIM_SEED=" in failures[0]


@pytest.mark.sim
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("variant", "expect"),
    [
        # DESIGN §4: a quiet follower campaigns when its leader's node is dead.
        ("FollowerIgnoresLeaderDeath", "liveness"),
        # A leader goes quiet only once every member holds its whole log.
        ("LeaderQuiescesWhileFollowerLags", "quiescence:"),
        # A quiet leader is not ticked: its host ends it when its quorum's nodes die.
        ("LeaderIgnoresLiveness", "check quorum:"),
        # Only a leader's traffic may leave before the local fsync (thesis §10.2.1).
        ("VoteSentBeforeDurable", "restarted"),
        # Early reveal: rows a newer (unstable) suffix replaces are not the committed entries.
        ("RevealsReplacedRows", "readers read its stored row"),
        # Early reveal: only rows on this node's disk, which a crash does not lose.
        ("RevealsBeforeDurable", "its disk holds"),
    ],
)
def test_broken_host_policy_is_caught(variant: str, expect: str) -> None:
    """Caught within the host seeds CI runs."""
    if ONE_SEED is not None:
        seeds = f"seed {ONE_SEED}"
        failures = run_chunk([int(ONE_SEED)], variant, None, host=True)
        print("\n".join(failures))
    else:
        seeds = f"{HOST_CI_SEEDS} host seeds"
        failures = sweep(range(HOST_CI_SEEDS), variant, None, stop_at_first=True, host=True)
    assert failures, f"{variant} survived {seeds}"
    assert expect in failures[0]
    assert "reproduce: WEIR_SIM_SEED=" in failures[0]
