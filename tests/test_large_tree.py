"""A tree of 1,000,000 nodes in a buffer pool much smaller than the file.

Inserts in order (default run) or in random order (soak: almost every insert
misses the pool and every flush cycle writes scattered blocks), kills whole subtrees, then checks the full ordered
content against the model, the integrity walk, and a reopen.
"""

from __future__ import annotations

import os
import random

import pytest

import irisrep
from irisrep import integrity
from irisrep.constants import BLOCK_SIZE

POOL_BLOCKS = 512  # 4 MiB of pool for a file several times larger


def build(path, n, seed, shuffled):
    rng = random.Random(seed)
    order = list(range(n))
    if shuffled:
        rng.shuffle(order)
    model = {}
    with irisrep.open(path, pool_blocks=POOL_BLOCKS, commit_mode="relaxed") as db:
        g = db.globals["big"]
        for i in order:
            # Two levels so that subtree kills remove real ranges: ^big(i // 100, i)
            g[i // 100, i] = i * 3
            model[(i // 100, i)] = i * 3
        assert len(db.tree.pool) <= POOL_BLOCKS + db.dirty_limit
        # Kill 50 whole subtrees of 100 nodes each, and ZKILL 100 single nodes.
        for top in rng.sample(range(n // 100), 50):
            del g[top]
            for i in range(top * 100, top * 100 + 100):
                model.pop((top, i), None)
        # ...and 50 consecutive ones (5,000 nodes): whole leaves go to the free list.
        for top in range(n // 200, n // 200 + 50):
            del g[top]
            for i in range(top * 100, top * 100 + 100):
                model.pop((top, i), None)
        for i in rng.sample(range(n), 100):
            g.zkill((i // 100, i))
            model.pop((i // 100, i), None)
        file_blocks = os.path.getsize(db.file_path) // BLOCK_SIZE
    return model, file_blocks


def check(path, model):
    reports = integrity.check(path)
    assert all(r.ok for r in reports), reports[0].errors[:5]
    assert reports[0].nodes == len(model)
    with irisrep.open(path, pool_blocks=POOL_BLOCKS, commit_mode="relaxed") as db:
        got = list(db.globals["big"].items())
    expect = sorted(model.items())
    assert len(got) == len(expect)
    assert got == expect
    return reports[0]


@pytest.mark.parametrize(
    "n, shuffled",
    [(1_000_000, False), pytest.param(1_000_000, True, marks=pytest.mark.soak)],
    ids=["sequential", "random"],
)
def test_million_nodes_small_pool(tmp_path, n, shuffled):
    """Sequential inserts run by default; random-order inserts (minutes) under -m soak."""
    path = str(tmp_path / "big")
    model, file_blocks = build(path, n, seed=11, shuffled=shuffled)
    assert file_blocks > 4 * POOL_BLOCKS  # the pool really is smaller than the file
    report = check(path, model)
    assert report.height >= 3
    assert report.free_blocks > 0  # killed subtrees went to the free list
