"""Checkpoints: atomic, verified, newest valid one wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.log.checkpoint import checkpoints, load_latest, prune, read_checkpoint, write_checkpoint


def test_newest_valid_checkpoint_wins(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10, b"old")
    write_checkpoint(tmp_path, 20, b"new")
    assert load_latest(tmp_path)[:2] == (20, b"new")  # type: ignore[index]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, damage: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    write_checkpoint(tmp_path, 10, b"old state")
    newest = write_checkpoint(tmp_path, 20, b"new state" * 100)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[:-50]
    elif damage == "flip":
        data[-3] ^= 0x01
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a checkpoint at all")
    newest.write_bytes(bytes(data))
    assert load_latest(tmp_path)[:2] == (10, b"old state")  # type: ignore[index]
    assert "unusable" in caplog.text
    with pytest.raises(ValueError):
        read_checkpoint(newest)


def test_none_when_there_is_no_valid_checkpoint(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    p = write_checkpoint(tmp_path, 5, b"x")
    p.write_bytes(b"")
    assert load_latest(tmp_path) is None


def test_prune_keeps_the_newest_and_removes_temp_files(tmp_path: Path) -> None:
    for off in (1, 2, 3, 4):
        write_checkpoint(tmp_path, off, b"s")
    old_tmp = tmp_path / "ckpt-00000000000000000009.tmp"
    old_tmp.write_bytes(b"partial")
    os.utime(old_tmp, (0, 0))  # left by a writer long gone
    removed = prune(tmp_path, keep=2)
    assert len(removed) == 3
    assert [o for o, _ in checkpoints(tmp_path)] == [4, 3]
    assert not list(tmp_path.glob("*.tmp"))
