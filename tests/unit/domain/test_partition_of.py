"""Users are assigned to partitions by a stable hash: evenly, and the same in every process."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from server.domain.partition import partition_of


def test_users_spread_evenly_and_a_smaller_count_is_a_coarser_split() -> None:
    ids = [f"user-{i:06d}" for i in range(64_000)] + [f"v1_{i:032x}" for i in range(64_000)]  # raw and pseudonyms
    counts = Counter(partition_of(u, 64) for u in ids)
    assert set(counts) == set(range(64))
    mean = len(ids) / 64
    assert max(counts.values()) < 1.1 * mean and min(counts.values()) > 0.9 * mean
    # a smaller count is a coarser split of the same hash: P=64 refines P=32
    assert all(partition_of(u, 64) % 32 == partition_of(u, 32) for u in ids[:1000])


def test_the_same_partition_in_another_process() -> None:
    """``hash()`` is salted per process; the partition must not be."""
    ids = [f"user-{i}" for i in range(50)]
    code = f"from server.domain.partition import partition_of; print([partition_of(u, 64) for u in {ids!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str([partition_of(u, 64) for u in ids])
