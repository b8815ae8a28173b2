"""The workload is a pure function of its seed and keeps the open-order list bounded."""

import pytest

from traders.workload import OPEN_ORDERS_MAX, Cancel, Replace, Submit, Workload


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_seed_same_stream(seed):
    a, b = Workload(seed), Workload(seed)
    for i in range(300):
        ra, rb = a.next_request(), b.next_request()
        assert ra == rb, f"seed {seed} request {i}"
        if isinstance(ra, Submit) and ra.price:
            a.remember(f"x.{i}", ra.symbol)
            b.remember(f"x.{i}", rb.symbol)


@pytest.mark.parametrize("seed", [4])
def test_mix_and_bound(seed):
    workload = Workload(seed)
    kinds = set()
    for i in range(2000):
        request = workload.next_request()
        kinds.add(type(request))
        if isinstance(request, Submit):
            assert request.quantity > 0, seed
            workload.remember(f"x.{i}", request.symbol)
    assert kinds == {Submit, Cancel, Replace}, seed
    assert len(workload._open) <= OPEN_ORDERS_MAX
