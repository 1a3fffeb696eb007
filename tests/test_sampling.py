"""Seeded stratified orderings: every prefix keeps each class's share."""
from collections import Counter

from mmcore.data.sampling import stratified_order


def test_every_prefix_of_the_stratified_order_is_proportional():
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    order = stratified_order(strata, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    for k in (7, 10, 33, 90):
        counts = Counter(strata[i] for i in order[:k])
        for s, size in (("a", 50), ("b", 30), ("c", 20)):
            assert abs(counts[s] - k * size / 100) <= 1
    assert (stratified_order(strata, seed=1) == order).all()
    assert not (stratified_order(strata, seed=2) == order).all()
