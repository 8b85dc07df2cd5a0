"""A full disk (issue 31): the error names the file and the space, nothing half-written
or orphaned is left, and a rerun after freeing space ends identical to an uninterrupted
run. ENOSPC is injected at the fsync of one chosen file (what a full disk raises)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from native_mm.io import checksum_path, write_checked
from tests.doubles import tokenizer_set, write_corpus


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture
def full_disk_at(monkeypatch):
    """``full_disk_at("00002.ids.bin")``: the next fsync of a temp file of that name fails."""
    real = os.fsync
    target: list[str] = []

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if target and re.fullmatch(rf"\.{re.escape(target[0])}\.\w+\.tmp", Path(name).name):
            target.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return target.append


def test_tokenize_on_a_full_disk_names_the_file_and_resumes_identical(tmp_path, full_disk_at):
    from native_mm.training.shards import tokenize

    corpus = write_corpus(tmp_path / "corpus", 12)
    quiet = {"workers": 0, "log": lambda s: None, "docs_per_shard": 2}
    tokenize([corpus], tmp_path / "clean", tokenizer_set(), **quiet)
    out = tmp_path / "full"
    full_disk_at("00002.ids.bin")
    with pytest.raises(OSError, match=r"00002\.ids\.bin: no space left on the device \(.* bytes "
                                      r"free there; it needs \d+ bytes\)"):  # fmt: skip
        tokenize([corpus], out, tokenizer_set(), **quiet)
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))
    tokenize([corpus], out, tokenizer_set(), **quiet)  # space freed: run again
    assert _tree(out) == _tree(tmp_path / "clean")


def test_a_checkpoint_write_on_a_full_disk_leaves_no_orphan_checksum(tmp_path, full_disk_at):
    path = tmp_path / "last.ckpt"
    full_disk_at("last.ckpt")
    with pytest.raises(OSError, match=r"last\.ckpt: no space left"):
        write_checked(path, b"x" * 1000)
    assert not path.exists() and not checksum_path(path).exists()  # no orphan
    write_checked(path, b"old")
    full_disk_at("last.ckpt")
    with pytest.raises(OSError, match="it needs 1,000 bytes"):
        write_checked(path, b"y" * 1000)
    assert path.read_bytes() == b"old"
    from native_mm.io import verify_checked

    assert verify_checked(path)  # the old file still verifies against its checksum file
