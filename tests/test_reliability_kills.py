"""Reliability under SIGKILL: tokenize, tokenizer training, fit and eval killed at random
moments; the re-run ends byte- or bit-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from native_mm.cli import main as cli
from tests.reliability_common import (
    REPO,
    TINY_VQGAN,
    _flip_byte,
)


# ---- 3. SIGKILL during tokenize: the re-run equals an uninterrupted run byte for byte --------
def _kill_corpus(corpus: Path, n: int) -> Path:
    """``n`` records cycling over the bad corpus's media (good and bad), unique ids."""
    media = sorted(p.name for p in (corpus.parent / "media").iterdir() if p.is_file())
    media = [m for m in media if m != "long.wav"]
    lines = []
    for i in range(n):
        name = media[i % len(media)]
        kind = "audio" if name.endswith(".wav") else "image"
        segs = [{"text": f"record {i}"}, {kind: f"media/{name}"}]
        lines.append(json.dumps({"id": f"k{i}", "segments": segs}))
    lines.insert(n // 2, "{not json")
    path = corpus.parent / "kill.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


# tokenize() with the numpy-only doubles tokenizer set (no torch import: a 0.3 s start).
_DOUBLES_TOKENIZE = (
    "import sys; from tests.doubles import tokenizer_set; "
    "from native_mm.training.shards import tokenize; "
    "tokenize([sys.argv[1]], sys.argv[2], tokenizer_set(), docs_per_shard=2, workers=0)"
)


def _kill_and_resume(cmd: list[str], out: Path, kills: int, seed: int) -> list[int]:
    """Run ``cmd`` (a tokenize into ``out``) and SIGKILL it ``kills`` times, each after a
    random number of newly finished shards plus a random few ms; then let it finish.
    Returns the finished shards at each kill."""
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done_at_kill = []

    def n_done() -> int:
        return len(list((out / "shards").glob("*.done.json"))) if out.exists() else 0

    for _ in range(kills):
        target = n_done() + rng.randint(1, 4)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if n_done() >= target:
                time.sleep(rng.uniform(0, 0.02))  # land inside a shard's writes sometimes
                break
            time.sleep(0.001)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode()
        assert not finished, f"tokenize ended before the kill:\n{err[-2000:]}"
        done_at_kill.append(n_done())
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    return done_at_kill


def test_tokenize_killed_at_random_moments_resumes_byte_identical(tmp_path):
    from tests.doubles import tokenizer_set, write_corpus

    jsonl = write_corpus(tmp_path / "corpus", 120)  # with an invalid and an unencodable record
    ref = tmp_path / "ref"
    from native_mm.training.shards import tokenize

    tokenize([jsonl], ref, tokenizer_set(), docs_per_shard=2, workers=0, log=lambda s: None)
    n_shards = len(json.loads((ref / "manifest.json").read_text())["shards"])
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", _DOUBLES_TOKENIZE, str(jsonl), str(out)]
    done = _kill_and_resume(cmd, out, kills=4, seed=0)
    assert all(0 < d < n_shards for d in done), (done, n_shards)
    assert _tree(out) == _tree(ref)  # every file, manifest and skipped.json included


@pytest.mark.slow
def test_native_mm_tokenize_killed_with_workers_resumes_byte_identical(corpus, tokenizer_dir,
                                                                       tmp_path):  # fmt: skip
    """The real verb, real tokenizers, two worker processes, eight kills."""
    jsonl = _kill_corpus(corpus, 120)
    ref = tmp_path / "ref"
    from native_mm.training.shards import tokenize

    tokenize([jsonl], ref, tokenizer_dir, docs_per_shard=2, workers=0, log=lambda s: None)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "native_mm.cli",
        "tokenize",
        str(jsonl),
        "--tokenizers",
        str(tokenizer_dir),
        "--out",
        str(out),
        "--workers",
        "2",
        "--docs-per-shard",
        "2",
    ]
    _kill_and_resume(cmd, out, kills=8, seed=1)
    assert _tree(out) == _tree(ref)


def test_tokenize_removes_temp_files_of_a_killed_run(corpus, tokenizer_dir, tmp_path):
    from native_mm.training.shards import tokenize

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    stale = [out / "shards" / ".00000.ids.bin.k1ll3d.tmp", out / ".manifest.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"half written")
    keep = out / "shards" / "notes.tmp"  # not an atomic_write temp name: left alone
    keep.write_bytes(b"")
    tokenize([corpus], out, tokenizer_dir, docs_per_shard=8, workers=0, log=lambda s: None)
    assert not any(p.exists() for p in stale) and keep.exists()


# ---- 6. SIGKILL during tokenizer training: the resumed run ends bit-identical -----------------
def _kill_training_and_resume(
    cmd: list[str], out: Path, kills: int, seed: int, finish_here: bool | list[str] = False,
    most: int = 3, jitter: float = 0.03, after_kill: Callable[[], object] | None = None,
) -> list[int]:  # fmt: skip
    """Run ``cmd`` (a ``tokenizer train`` or ``fit`` into ``out``) and SIGKILL it ``kills``
    times, each after a random number (1 to ``most``) of new checkpoint writes plus 0 to
    ``jitter`` s; ``after_kill()`` runs after each kill. Then let it finish (in this process
    with ``finish_here``: saves a ~6 s interpreter start and import; a list is the verb's
    arguments to finish with, else those of ``cmd``).
    Returns the step of ``last.ckpt`` at each kill (it must always load)."""
    from native_mm.io import checksum_path, load_torch

    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    side = checksum_path(out / "checkpoints" / "last.ckpt")
    steps = []

    def version() -> str:
        return side.read_text() if side.exists() else ""

    for _ in range(kills):
        seen, writes, target = version(), 0, rng.randint(1, most)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline and writes < target:
            if (now := version()) != seen:
                seen, writes = now, writes + 1
            time.sleep(0.002)
        time.sleep(rng.uniform(0, jitter))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode()
        assert not finished, f"training ended before the kill:\n{err[-2000:]}"
        steps.append(load_torch(out / "checkpoints" / "last.ckpt")["global_step"])
        if after_kill is not None:
            after_kill()
    if finish_here:
        # cmd[3:]: the verb's arguments after `python -m native_mm.cli`
        assert cli(finish_here if isinstance(finish_here, list) else cmd[3:]) == 0
        return steps
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return steps


def _same_training_result(ref: Path, out: Path, steps: int) -> None:
    """Tokenizer files byte-identical; last.ckpt's weights, optimiser and RNG states equal."""
    from native_mm.io import load_torch

    for name in ("weights.pt", "config.json", "data_report.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    a, b = (load_torch(d / "checkpoints" / "last.ckpt") for d in (ref, out))
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert repr(a["optimizer_states"]) == repr(b["optimizer_states"])
    rng = [next(v for k, v in c["callbacks"].items() if "RNGState" in k) for c in (a, b)]
    assert torch.equal(rng[0]["torch"], rng[1]["torch"]) and rng[0]["python"] == rng[1]["python"]


def _audio_train_cmd(corpus: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "native_mm.cli", "tokenizer", "train", "audio", "--config",
            str(REPO / "tokenizers/audio/tiny.yaml"), "--out", str(out), f"data.source={corpus}",
            f"trainer.max_steps={steps}", "trainer.checkpoint_every=1", "n_samples=1"]  # fmt: skip


def _image_train_cmd(corpus: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "native_mm.cli", "tokenizer", "train", "image", "--config",
            str(REPO / "tokenizers/image/digits.yaml"), "--out", str(out), f"data={corpus}",
            *TINY_VQGAN[:-2], f"trainer.max_steps={steps}", "trainer.checkpoint_every=1",
            "disc_start=3"]  # fmt: skip


def test_audio_tokenizer_training_killed_resumes_bit_identical(corpus, tmp_path, capsys):
    """One SIGKILL of ``tokenizer train audio`` on the dirty corpus (the discriminator
    starts at step 2, quantizer dropout draws from Python's RNG every step); the resume
    runs the same verb in this process."""
    steps = 8
    ref = tmp_path / "ref"
    assert cli(_audio_train_cmd(corpus, ref, steps)[3:]) == 0
    out = tmp_path / "killed"
    cmd = _audio_train_cmd(corpus, out, steps)
    killed_at = _kill_training_and_resume(cmd, out, 1, seed=0, finish_here=True)
    assert all(0 < s < steps for s in killed_at), killed_at
    _same_training_result(ref, out, steps)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_tokenizer_training_killed_three_times_resumes_bit_identical(kind, corpus, tmp_path):
    steps = 20
    make = _image_train_cmd if kind == "image" else _audio_train_cmd
    ref = tmp_path / "ref"
    assert cli(make(corpus, ref, steps)[3:]) == 0
    out = tmp_path / "killed"
    killed_at = _kill_training_and_resume(make(corpus, out, steps), out, 3, seed=1, most=5)
    assert all(0 < s < steps for s in killed_at), killed_at
    _same_training_result(ref, out, steps)


# ---- 7. SIGKILL during fit and eval: re-running ends where an uninterrupted run ends --------
FIT_STEPS = 12


def _fit_cmd(shards: Path, out: Path, steps: int, slow: float = 0.25) -> list[str]:
    """``native-mm fit ... --ckpt_path last``, the command a user re-runs after a kill (the
    first run finds no checkpoint and starts fresh). Each step sleeps ``slow`` s
    (:class:`tests.slowdown.SlowDown`) so that kills land anywhere in the run."""
    from tests.doubles import fit_args

    slowdown = ["--trainer.callbacks+=tests.slowdown.SlowDown",
                f"--trainer.callbacks.seconds={slow}"] if slow else []  # fmt: skip
    args = fit_args(shards, out, steps, "--ckpt_path", "last", *slowdown)
    return [sys.executable, "-m", "native_mm.cli", *args]


def _logged_losses(out: Path) -> list[tuple[int, float]]:
    """(step, train/loss_opt) of every complete row of a run's CSV log, in file order."""
    import csv

    path = out / "csv" / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # a row the kill cut short
    rows = csv.DictReader(lines)
    return [(int(r["step"]), float(r["train/loss_opt"])) for r in rows if r.get("train/loss_opt")]


def _same_content(a: object, b: object, where: str = "") -> list[str]:
    """Where two unpickled checkpoints differ: tensors bit for bit, containers recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        )  # fmt: skip
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in _same_content(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _same_content(x, y, f"{where}/{i}")]
    return [] if type(a) is type(b) and a == b else [where]


@pytest.mark.parametrize("kills", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_fit_killed_at_random_moments_resumes_bit_identical(kills, text_shards_dir, tmp_path):
    """SIGKILL ``native-mm fit`` ``kills`` times (1-4 checkpoint writes apart plus 0-0.25 s,
    i.e. anywhere in a step, checkpoint writes included) and re-run the same command to the
    end: last.ckpt holds the uninterrupted run's content exactly (every weight, optimiser
    and scheduler state, loop counters, the data sampler's state), and every logged loss,
    the killed runs' rows included, equals the uninterrupted run's at that step."""
    from native_mm.io import load_torch

    steps = FIT_STEPS
    run = tmp_path / "run"  # both runs write here, so the paths stored in last.ckpt agree
    assert cli(_fit_cmd(text_shards_dir, run, steps, slow=0)[3:]) == 0
    clean_run = run.rename(tmp_path / "clean")
    clean = dict(_logged_losses(clean_run))
    assert sorted(clean) == list(range(steps))

    logged: list[tuple[int, float]] = []  # a resumed run starts a new metrics.csv: keep each
    killed_at = _kill_training_and_resume(
        _fit_cmd(text_shards_dir, run, steps), run, kills, seed=kills, most=4, jitter=0.25,
        finish_here=_fit_cmd(text_shards_dir, run, steps, slow=0)[3:],
        after_kill=lambda: logged.extend(_logged_losses(run)),
    )  # fmt: skip
    logged += _logged_losses(run)
    print(f"fit killed {kills}x, last.ckpt at steps {killed_at}")
    assert len(killed_at) == kills and all(0 < s < steps for s in killed_at), killed_at
    assert {s for s, _ in logged} == set(range(steps))
    assert [(s, v) for s, v in logged if v != clean[s]] == []  # equal, not approximately

    a, b = (load_torch(d / "checkpoints" / "last.ckpt") for d in (clean_run, run))
    assert a["global_step"] == b["global_step"] == steps
    assert sorted(a["state_dict"]) == sorted(b["state_dict"]) and len(a["state_dict"]) > 5
    assert _same_content(a, b) == []  # every tensor bit-identical, every other value equal
    # The same files, byte for byte (io.torch_bytes interns strings, so pickle's memo does
    # not depend on where they came from): no stale step checkpoint, no temp file left.
    assert sorted(_tree(run / "checkpoints")) == sorted(_tree(clean_run / "checkpoints"))
    for name in ("last.ckpt", "last.ckpt.sha256.json"):
        assert (run / "checkpoints" / name).read_bytes() == (
            clean_run / "checkpoints" / name).read_bytes(), name  # fmt: skip


def test_pipeline_verifies_the_checksummed_eval_json_it_reads(tmp_path, monkeypatch):
    """The pipeline skips eval only when eval.json reads back intact; a corrupted one is
    evaluated again, and the report refuses it naming the file."""
    from native_mm.apps.digits import evaluation
    from native_mm.apps.digits.corpus import DIRECTIONS
    from native_mm.apps.digits.pipeline import Pipeline
    from native_mm.io import checksum_path

    logs: list[str] = []
    pipe = Pipeline({"_path": str(tmp_path / "recipe.yaml")}, tmp_path / "run",
                    log=lambda *a, **k: logs.append(" ".join(map(str, a))))  # fmt: skip
    calls = []

    def fake_evaluate(ckpt, tokenizers, out, cfg, audio_root=None):
        calls.append(out)
        rows = {d: {"accuracy": 0.5, "n": 10} for d in DIRECTIONS}
        evaluation.save_outputs({"directions": rows}, {}, Path(out), cfg)

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", fake_evaluate)
    eval_json = pipe.paths["eval"] / "eval.json"
    assert pipe.eval() is None and len(calls) == 1  # ran
    assert checksum_path(eval_json).is_file() and "directions" in evaluation.read_result(eval_json)
    assert pipe.eval() == pipe.paths["eval"] and len(calls) == 1  # intact: skipped
    for damage in (_flip_byte, lambda p: p.write_bytes(p.read_bytes()[:-20])):
        damage(eval_json)
        with pytest.raises(ValueError, match=r"eval\.json: corrupted evaluation result"):
            pipe.report(0.0)
        assert pipe.eval() is None  # evaluated again
        assert "eval.json: corrupted evaluation result" in logs[-1], logs
    assert len(calls) == 3 and pipe.report(0.0)["eval"] == dict.fromkeys(DIRECTIONS, 0.5)


# `native-mm eval` whose every atomic write lingers 50 ms between its temp file and the
# rename, so that kills land inside the writes of the outputs as well as between them.
_SLOW_WRITES_EVAL = (
    "import contextlib, sys, time; import native_mm.io as nio; real = nio.atomic_write\n"
    "@contextlib.contextmanager\n"
    "def slow(path, mode='wb'):\n"
    "    with real(path, mode) as f:\n"
    "        yield f\n"
    "        time.sleep(0.05)\n"
    "nio.atomic_write = slow\n"
    "from native_mm.cli import main; sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
def test_eval_killed_while_writing_its_outputs_reruns_to_the_same_result(
    eval_checkpoint, tokenizer_dir, tmp_path, monkeypatch
):
    """SIGKILL ``native-mm eval`` twice while it writes its outputs (after 0 to all-but-one
    files, plus 0-50 ms): every file then under its final name is already the
    uninterrupted run's, and re-running gives the same outputs (eval.json up to its
    timings, every other file byte-identical) and leaves no temp file."""
    from native_mm.apps.digits import evaluation
    from native_mm.io import read_json

    judges = evaluation.Judges()  # the same judges for both in-process runs (~10 s each)
    monkeypatch.setattr(evaluation, "Judges", lambda audio_root=None: judges)
    run = tmp_path / "eval"  # both runs write here (eval.json stores no output path)
    argv = ["eval", "--ckpt", str(eval_checkpoint), "--tokenizers", str(tokenizer_dir),
            "--out", str(run), "--max-items", "10", "--batch-size", "10",
            "--audio-max-seconds", "0.1", "--n-wavs", "1"]  # fmt: skip
    assert cli(argv) == 0
    clean_dir = run.rename(tmp_path / "clean")
    clean = _tree(clean_dir)
    media = json.loads(clean["eval.json"])["files"]
    assert len(media) >= 4 and any(f.endswith(".png") for f in media), media

    def listing() -> dict[str, int]:  # file -> mtime (ns), temp files included
        out = {}
        for p in run.rglob("*") if run.exists() else ():
            with contextlib.suppress(FileNotFoundError):  # a temp file renamed meanwhile
                if p.is_file():
                    out[str(p.relative_to(run))] = p.stat().st_mtime_ns
        return out

    def is_temp(name: str) -> bool:
        return Path(name).name.startswith(".")

    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _SLOW_WRITES_EVAL, *argv]
    kills = []  # (files this run had renamed into place, temp files left) at each kill
    for _ in range(2):
        target, before = rng.randint(0, len(clean) - 1), listing()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        deadline, written = time.time() + 300, 0
        while proc.poll() is None and time.time() < deadline:
            now = listing()
            written = sum(not is_temp(f) and before.get(f) != t for f, t in now.items())
            if written >= target and any(is_temp(f) and f not in before for f in now):
                break  # the (target + 1)-th output is being written
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode()
        assert not finished, f"eval ended before the kill:\n{err[-2000:]}"
        now = _tree(run)
        kills.append((written, sum(map(is_temp, now))))
        for f in now:  # atomic: whatever is under a final name is whole, the clean run's
            if not is_temp(f) and f not in ("eval.json", "eval.json.sha256.json"):
                assert now[f] == clean[f], f
        if "eval.json" in now:  # written last, with its checksum
            evaluation.read_result(run)
    print(f"eval killed with (outputs written, temp files left) = {kills}")
    assert cli(argv) == 0
    again = _tree(run)
    assert sorted(again) == sorted(clean)  # no temp file of a killed write is left
    timings = {"eval.json", "eval.json.sha256.json"}  # eval.json holds seconds per direction
    assert [f for f in clean if f not in timings and again[f] != clean[f]] == []

    def untimed(d: Path) -> dict:
        result, _ = read_json(d / "eval.json", "eval.json", verify=True)
        for row in result["directions"].values():
            row.pop("seconds")
        return result

    assert untimed(run) == untimed(clean_dir)
