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


def test_fit_on_a_full_disk_names_the_checkpoint_and_resumes_identical(tmp_path, monkeypatch,
                                                                       capsys):  # fmt: skip
    """The third checkpoint write of a fit hits a full disk: one line naming last.ckpt, the
    previous checkpoint intact; resumed after freeing space, the run ends with the weights
    of an uninterrupted one."""
    import torch

    from native_mm.cli import main as cli
    from tests.doubles import fit_args, text_shards

    shards = text_shards(tmp_path / "shards", n_docs=30)
    assert cli(fit_args(shards, tmp_path / "clean", 6)) == 0
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if re.fullmatch(r"\.last\.ckpt\.\w+\.tmp", Path(os.readlink(f"/proc/self/fd/{fd}")).name):
            seen.append(fd)
            if len(seen) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "full"
    capsys.readouterr()
    assert cli(fit_args(shards, out, 6)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(r"last\.ckpt: no space left on the device", err[-1]), err[-3:]
    assert "Traceback" not in "\n".join(err)
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the one before
    monkeypatch.setattr(os, "fsync", real)  # space freed
    assert cli(fit_args(shards, out, 6, "--ckpt_path", str(last))) == 0
    a = torch.load(last, weights_only=True)
    b = torch.load(tmp_path / "clean" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
