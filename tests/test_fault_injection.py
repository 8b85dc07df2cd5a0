"""Fault injection into shards (issue 31): random byte flips, truncations, deletions and
appended junk in every shard file and the manifest, under every verify mode. Each trial
reads every document the way training does and must end in a ShardError naming the file,
or read exactly the original data. A trial that reads changed data without an error is
*missed*; any other exception is a *traceback*. Both must be 0, except the one blind spot
the reader documents: a flip in ``ids.bin`` / ``loss.bin`` that leaves a valid value is
found by ``verify="full"`` only (counted apart, as ``undetectable_without_full``).

Seeded and fast here (``TRIALS``); ``FAULT_TRIALS=2000 pytest tests/test_fault_injection.py``
runs the longer mode and prints the table recorded in RELIABILITY.md.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from native_mm.training.shard_reader import ShardSet
from native_mm.training.shards import FILES, ShardError

TRIALS = int(os.environ.get("FAULT_TRIALS", "120"))
FAULTS = ("flip", "flip_many", "truncate", "delete", "append")


def _read_all(path: Path, verify: str) -> list[tuple[np.ndarray, np.ndarray]]:
    ss = ShardSet(path, verify=verify)
    return [ss.document(i) for i in range(len(ss))]


def _inject(path: Path, fault: str, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    if fault == "delete":
        path.unlink()
    elif fault == "truncate":
        path.write_bytes(bytes(data[: int(rng.integers(0, max(1, len(data))))]))
    elif fault == "append":
        path.write_bytes(bytes(data) + rng.bytes(int(rng.integers(1, 16))))
    else:
        for _ in range(1 if fault == "flip" else int(rng.integers(2, 9))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))


def count_trials(
    clean: Path,
    work: Path,
    trials: int,
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator], tuple[str, str, str]],
    load: Callable[[Path, str, str], Any],
    errors: tuple[type[BaseException], ...],
    judge: Callable[[Any, str, str, str], str],
) -> collections.Counter:
    """The trial loop of both fault-injection suites (shards here, checkpoints in
    test_checkpoint_faults.py): copy the clean tree, ``draw`` a file, a fault and a label
    (e.g. the verify mode), inject, ``load``. An error of ``errors`` must name the file (or
    the file its ``.sha256.json`` guards) in one line; a load is ``judge``d ("harmless",
    "missed", ...); any other exception is a "traceback"."""
    counts: collections.Counter = collections.Counter()
    for t in range(trials):
        trial = work / f"t{t}"
        shutil.copytree(clean, trial)
        rel, fault, label = draw(rng)
        what = f"{rel} {fault} {label}".rstrip()
        _inject(trial / rel, fault, rng)
        try:
            got = load(trial, rel, label)
        except errors as e:
            msg, name = str(e), Path(rel).name
            named = (name in msg or name.removesuffix(".sha256.json") in msg) and "\n" not in msg
            counts["caught" if named else "caught_without_the_file"] += 1
            if not named:
                print(f"caught without the file: {what}: {e}")
        except Exception as e:  # noqa: BLE001 -- what this test exists to count
            counts["traceback"] += 1
            print(f"traceback: {what}: {type(e).__name__}: {e}")
        else:
            key = judge(got, rel, fault, label)
            counts[key] += 1
            if key == "missed":
                print(f"missed: {what}")
        shutil.rmtree(trial)
    return counts


def run_trials(clean: Path, work: Path, trials: int, seed: int = 0) -> collections.Counter:
    original = _read_all(clean, "full")
    shard_files = sorted(p for p in (clean / "shards").iterdir() if p.name.endswith(FILES))
    files = ["manifest.json"] + [f"shards/{p.name}" for p in shard_files]

    def draw(rng: np.random.Generator) -> tuple[str, str, str]:
        rel = files[int(rng.integers(0, len(files)))]
        return rel, str(rng.choice(FAULTS)), str(rng.choice(["full", "size", "none"]))

    def judge(got: list, rel: str, fault: str, verify: str) -> str:
        same = len(got) == len(original) and all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            for a, b in zip(got, original, strict=True)
        )
        in_values = rel.endswith(("ids.bin", "loss.bin")) and fault.startswith("flip")
        if same:
            return "harmless"
        return "undetectable_without_full" if in_values and verify != "full" else "missed"

    def load(trial: Path, rel: str, verify: str) -> list:
        return _read_all(trial, verify)

    return count_trials(clean, work, trials, np.random.default_rng(seed), draw, load,
                        (ShardError,), judge)  # fmt: skip


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory) -> Path:
    from tests.doubles import text_shards

    return text_shards(tmp_path_factory.mktemp("clean") / "shards", n_docs=150)


def test_random_faults_are_caught_naming_the_file(clean_shards, tmp_path) -> None:
    counts = run_trials(clean_shards, tmp_path, TRIALS)
    print(dict(counts))
    assert counts["missed"] == 0 and counts["traceback"] == 0, dict(counts)
    assert counts["caught_without_the_file"] == 0, dict(counts)
    assert counts["caught"] > TRIALS // 2  # the faults did land


def test_a_flipped_offset_is_an_error_at_open_under_every_mode(clean_shards, tmp_path) -> None:
    """The issue's case: docs.npy bytes flipped were accepted by verify=size."""
    for verify in ("full", "size", "none"):
        trial = tmp_path / verify
        shutil.copytree(clean_shards, trial)
        docs = trial / "shards" / "00000.docs.npy"
        off = np.load(docs)
        off[5] = -4294967047
        np.save(docs, off)
        with pytest.raises(ShardError, match=r"00000\.docs\.npy.*(sha256|offsets)"):
            _read_all(trial, verify)


def test_an_id_outside_the_vocabulary_names_the_shard_and_document(clean_shards, tmp_path):
    trial = tmp_path / "ids"
    shutil.copytree(clean_shards, trial)
    ss = ShardSet(trial, verify="none")
    start = int(ss.doc_start[70])  # document 70: the second shard's 6th document
    ids = np.memmap(trial / "shards" / "00001.ids.bin", dtype=ss.dtype, mode="r+")
    ids[start + 1] = ss.vocab.size + 7
    ids.flush()
    del ids
    ss = ShardSet(trial, verify="size")
    with pytest.raises(ShardError, match=r"00001\.ids\.bin: corrupted shard: document 6 holds"):
        [ss.document(i) for i in range(len(ss))]


class _Bad(__import__("torch").utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise ShardError("/data/shards/00001.ids.bin: corrupted shard: document 6 holds id 9")


def test_a_worker_process_error_reaches_the_user_in_one_line() -> None:
    """With DataLoader workers the error comes back wrapped around the worker's traceback;
    the command line prints its last line, the message."""
    from torch.utils.data import DataLoader

    from native_mm.cli import one_line

    with pytest.raises(ShardError) as e:
        next(iter(DataLoader(_Bad(), num_workers=1)))
    assert "Original Traceback" in str(e.value)
    assert one_line(e.value) == "/data/shards/00001.ids.bin: corrupted shard: document 6 holds id 9"
