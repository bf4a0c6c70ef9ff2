"""The controller's producer-id commands: blocks for nodes, and named producers.

`AllocateProducerIds` hands a node a block of ids it alone gives out;
`InitNamedProducer` keeps one id per name and raises its epoch, which fences
the previous holder. Ids come from one counter, so no id is ever handed out
twice, whether from a block or to a name, across snapshots too.
"""

from __future__ import annotations

import pytest

from tests.unit.cluster.controller_gen import cluster
from weir.cluster.controller import (
    AllocateProducerIds,
    ControllerState,
    InitNamedProducer,
    ProducerIdBlock,
    ProducerIdentity,
    Result,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)
from weir.cluster.controller import state as state_module
from weir.cluster.controller.errors import InvalidProducerName, TooManyProducerNames

pytestmark = pytest.mark.timeout(30)


def applied(state: ControllerState, command: AllocateProducerIds | InitNamedProducer) -> Result:
    result = state.apply(command)
    state.check_invariants()
    return result


def test_blocks_are_disjoint_consecutive_and_start_at_the_first_id() -> None:
    state = cluster(3)
    first = applied(state, AllocateProducerIds(100))
    second = applied(state, AllocateProducerIds(10))
    assert first == ProducerIdBlock(state_module.FIRST_PRODUCER_ID, 100)
    assert second == ProducerIdBlock(state_module.FIRST_PRODUCER_ID + 100, 10)
    assert state.next_producer_id == state_module.FIRST_PRODUCER_ID + 110


def test_a_block_holds_at_least_one_id_and_at_most_the_block_limit() -> None:
    state = cluster(1)
    assert applied(state, AllocateProducerIds(0)) == ProducerIdBlock(1, 1)
    huge = applied(state, AllocateProducerIds(10**12))
    assert huge == ProducerIdBlock(2, state_module.PRODUCER_ID_BLOCK_MAX)


def test_every_allocation_moves_the_version() -> None:
    state = cluster(1)
    before = state.version
    applied(state, AllocateProducerIds(5))
    applied(state, InitNamedProducer("billing"))
    assert state.version == before + 2


def test_a_name_keeps_its_id_and_each_init_raises_its_epoch() -> None:
    state = cluster(3)
    block = applied(state, AllocateProducerIds(3))
    assert isinstance(block, ProducerIdBlock)
    first = applied(state, InitNamedProducer("orders-writer"))
    again = applied(state, InitNamedProducer("orders-writer"))
    other = applied(state, InitNamedProducer("audit"))
    # Named ids come from the same counter as blocks: never inside one.
    assert first == ProducerIdentity(block.first + block.count, 0)
    assert again == ProducerIdentity(block.first + block.count, 1)
    assert other == ProducerIdentity(block.first + block.count + 1, 0)
    after = applied(state, AllocateProducerIds(2))
    assert after == ProducerIdBlock(block.first + block.count + 2, 2)


def test_a_name_whose_epochs_ran_out_gets_a_new_id_at_epoch_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "PRODUCER_EPOCH_MAX", 2)
    state = cluster(1)
    epochs = [applied(state, InitNamedProducer("old")) for _ in range(3)]
    assert epochs == [ProducerIdentity(1, 0), ProducerIdentity(1, 1), ProducerIdentity(1, 2)]
    assert applied(state, InitNamedProducer("old")) == ProducerIdentity(2, 0)
    assert applied(state, InitNamedProducer("old")) == ProducerIdentity(2, 1)


@pytest.mark.parametrize("name", ["", "x" * 256, "tab\there", "del\x7f"])
def test_an_invalid_name_is_refused_and_changes_nothing(name: str) -> None:
    state = cluster(1)
    before = (state.version, state.next_producer_id, state.producer_names())
    result = applied(state, InitNamedProducer(name))
    assert isinstance(result, InvalidProducerName)
    assert result.reason == "INVALID_PRODUCER_NAME"
    assert (state.version, state.next_producer_id, state.producer_names()) == before


def test_names_are_bounded_but_a_known_name_still_gets_its_next_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "PRODUCER_NAMES_MAX", 2)
    state = cluster(1)
    applied(state, InitNamedProducer("a"))
    applied(state, InitNamedProducer("b"))
    next_id = state.next_producer_id
    refused = applied(state, InitNamedProducer("c"))
    assert isinstance(refused, TooManyProducerNames)
    assert refused.code == "RESOURCE_EXHAUSTED"
    assert state.next_producer_id == next_id
    assert applied(state, InitNamedProducer("a")) == ProducerIdentity(1, 1)


def test_commands_and_producer_state_survive_their_encodings() -> None:
    for command in (AllocateProducerIds(42), InitNamedProducer("name with spaces")):
        assert decode_command(encode_command(command)) == command
    state = cluster(2)
    applied(state, AllocateProducerIds(10))
    applied(state, InitNamedProducer("p"))
    applied(state, InitNamedProducer("p"))
    restored = decode_state(encode_state(state))
    restored.check_invariants()
    assert restored.next_producer_id == state.next_producer_id
    assert restored.producer_names() == state.producer_names() == (("p", 11, 1),)
    # The restored controller goes on exactly where the original would.
    assert restored.apply(InitNamedProducer("p")) == state.apply(InitNamedProducer("p"))
    assert restored.apply(AllocateProducerIds(3)) == state.apply(AllocateProducerIds(3))
