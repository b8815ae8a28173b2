"""A state that applied batch entries (several requests per log index) snapshots and restores.

Regression: the snapshot decoder refused any state whose executed + duplicate count exceeded its
applied index, which every batch entry makes true (found by ``exchange bench-rejoin``).
"""

from exchange.state_machine import ExchangeStateMachine, encode_batch
from orderbook import AddOrder, Side, encode_command


def test_a_state_built_from_batches_restores():
    state = ExchangeStateMachine()
    for index in range(1, 6):
        items = [(7, index * 10 + i,
                  encode_command(AddOrder("AB", f"7.{index * 10 + i}", Side.BUY, 100 + i, 5)))
                 for i in range(8)]
        state.apply_entry(index, encode_batch(items))
    assert state.executed_count == 40 > state.applied_index == 5
    restored = ExchangeStateMachine.restore(state.snapshot())
    assert restored.state_digest() == state.state_digest()
    assert restored.applied_index == 5 and restored.executed_count == 40
