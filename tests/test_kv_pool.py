"""The KV block pool: exact ids, refusals that change nothing, and budget strings."""

from __future__ import annotations

import pytest

from batchcli.engine.kv_pool import (
    AUTO_SHARE, BlockPool, BlockStateError, OutOfBlocks, mem_available_bytes, parse_kv_budget,
)


def test_fresh_pool_hands_out_lowest_ids_first():
    pool = BlockPool(8)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(2) == [3, 4]
    assert (pool.num_free, pool.num_used, pool.num_total) == (3, 5, 8)
    pool.check_integrity()


def test_freed_ids_come_back_most_recent_run_first_in_order():
    pool = BlockPool(8)
    pool.allocate(6)  # 0..5
    pool.free([1, 3])
    pool.free([4, 5])
    assert pool.allocate(2) == [4, 5]
    assert pool.allocate(1) == [1]
    assert pool.allocate(2) == [3, 6]
    assert pool.allocate(1) == [7]
    pool.check_integrity()


def test_out_of_blocks_takes_nothing():
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(OutOfBlocks, match="asked for 2 KV blocks, only 1 free") as e:
        pool.allocate(2)
    assert (e.value.requested, e.value.free) == (2, 1)
    assert pool.num_free == 1
    assert pool.allocate(1) == [3]
    assert pool.allocate(0) == []


def test_double_free_raises_and_changes_nothing():
    pool = BlockPool(4)
    ids = pool.allocate(2)
    pool.free([ids[0]])
    with pytest.raises(BlockStateError, match="double free of KV block 0"):
        pool.free([ids[1], ids[0]])
    assert pool.is_used(ids[1])  # the valid half was not freed either
    with pytest.raises(BlockStateError, match="double free of KV block 1"):
        pool.free([1, 1])
    pool.check_integrity()


def test_bad_ids_raise():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    with pytest.raises(BlockStateError, match="outside 0..2"):
        pool.free([3])
    with pytest.raises(BlockStateError, match="outside 0..2"):
        pool.is_used(-1)
    assert pool.is_used(a) and not pool.is_used(2)
    with pytest.raises(ValueError, match="at least 1 block"):
        BlockPool(0)


def test_integrity_check_catches_corruption():
    pool = BlockPool(4)
    pool.allocate(2)
    pool.check_integrity()
    pool._free.append(0)  # corrupt on purpose: a used block also on the free list
    with pytest.raises(BlockStateError):
        pool.check_integrity()
    pool = BlockPool(4)
    pool._free.append(pool._free[-1])
    with pytest.raises(BlockStateError, match="duplicate"):
        pool.check_integrity()
    pool = BlockPool(2)
    pool._used[0] = True  # used, yet on the free list
    with pytest.raises(BlockStateError):
        pool.check_integrity()


@pytest.mark.parametrize(
    "text, blocks",
    [
        ("2GiB", 2 * 2**30 // (1024 * 16)),
        ("500MB", 500 * 10**6 // 1024 // 16),
        ("1.5 MiB", 3 * 2**19 // 1024 // 16),
        ("50000tok", 50000 // 16),
        ("auto", int(10**9 * AUTO_SHARE) // 1024 // 16),
        (" 64TOK ", 4),
    ],
)
def test_parse_kv_budget(text, blocks):
    assert parse_kv_budget(text, bytes_per_token=1024, block_size=16, available_bytes=10**9) == blocks


def test_parse_kv_budget_below_one_block():
    with pytest.raises(ValueError, match="'15KiB' holds 15 tokens, less than one block of 16"):
        parse_kv_budget("15KiB", bytes_per_token=1024, block_size=16, available_bytes=10**9)


@pytest.mark.parametrize("text", ["", "2", "GiB", "2 parsecs", "-1GiB", "1.5tok", "autox"])
def test_parse_kv_budget_rejects_bad_strings(text):
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        parse_kv_budget(text, bytes_per_token=1024, block_size=16, available_bytes=10**9)


def test_mem_available_bytes(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert mem_available_bytes(str(f)) == 2048 * 1024
    f.write_text("MemTotal: 100 kB\n")
    with pytest.raises(OSError, match="MemAvailable"):
        mem_available_bytes(str(f))
    assert mem_available_bytes() > 0
