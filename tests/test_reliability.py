"""Reliability: a dirty corpus through every verb, kills mid-write, non-finite training, fuzzing.

The bad-input corpus is built by :mod:`tests.bad_inputs` (see RELIABILITY.md for the table).
Verbs are driven through ``native_mm.cli.main``, as a user would run them, and every message
must name the file or record it is about; no Python traceback may reach the user.
"""

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

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from native_mm.cli import main as cli
from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import Vocab
from tests import bad_inputs
from tests.bad_inputs import EXPECTED, LINE_FAILURES
from tests.test_sequence import merge_text

REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer_set(text_tokenizer, out: Path, seed: int = 0) -> Path:
    """Real text BPE + tiny random VQ-GAN and EnCodec (weights from ``seed``), saved."""
    from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
    from native_mm.tokenizers.image import ImageConfig, ImageTokenizer

    torch.manual_seed(seed)
    image = ImageTokenizer(
        ImageConfig(factor=4, channels=64, channel_mult=(1, 1, 1), z_channels=8,
                    codebook_size=32, codebook_dim=4, kmeans_init=False, max_size=64)
    )  # fmt: skip
    audio = AudioTokenizer(
        AudioConfig(sample_rate=bad_inputs.AUDIO_SR, n_filters=4, ratios=[4, 4], dimension=8,
                    lstm=0, n_q=3, codebook_size=16, kmeans_iters=1)
    )  # fmt: skip
    TokenizerSet(text_tokenizer, image, audio, image_max_grid=16).save(out)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, text_tokenizer) -> Path:
    return tiny_tokenizer_set(text_tokenizer, tmp_path_factory.mktemp("tok") / "tokenizers")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return bad_inputs.build(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def tokenized(tokenizer_dir, corpus, tmp_path_factory) -> tuple[Path, int, str]:
    """``native-mm tokenize`` over the bad corpus: (out dir, exit code, stderr)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    argv = ["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
            "--workers", "0", "--docs-per-shard", "4"]  # fmt: skip
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli(argv)
    return out, rc, err.getvalue()


def _line_of(corpus: Path) -> dict[str, int]:
    """Record id -> line number, for the records whose line parses."""
    lines = {}
    for n, raw in enumerate(corpus.read_bytes().splitlines(), start=1):
        try:
            obj = json.loads(raw.decode("utf-8", errors="surrogatepass"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("id") not in lines:
            lines[obj.get("id")] = n
    return lines


def _validator_counts() -> dict[str, int]:
    """The records of the bad corpus the document validator refuses, by reason."""
    counts: dict[str, int] = {}
    for stage, reason in EXPECTED.values():
        if stage == "validate":
            counts[reason] = counts.get(reason, 0) + 1
    for reason in LINE_FAILURES:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _kept(out: Path) -> set[str]:
    return {i for sh in sorted((out / "shards").glob("*.done.json"))
            for i in json.loads(sh.read_text())["doc_ids"]}  # fmt: skip


# ---- 1. the bad-input corpus through every verb ------------------------------------------
def test_tokenize_skips_each_bad_record_with_a_counted_reason(tokenized, corpus):
    out, rc, err = tokenized
    assert rc == 0, err
    assert "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = json.loads((out / "skipped.json").read_text())
    kept = _kept(out)
    assert kept == {k for k, (stage, _) in EXPECTED.items() if stage == "kept"}
    assert manifest["documents"] == len(kept)
    # Tokenizer refusals: one skipped.json record each, its reason and a message that names
    # the JSONL line, the record id and the media file.
    lines = _line_of(corpus)
    encode_skips = {r["id"]: r for r in skipped["records"] if "id" in r}
    want = {k: v for k, (stage, v) in EXPECTED.items() if stage == "encode"}
    assert {k: r["reason"] for k, r in encode_skips.items()} == want
    for doc_id, r in encode_skips.items():
        assert f"docs.jsonl:{lines[doc_id]}" in r["message"] and repr(doc_id) in r["message"]
        assert "/media/" in r["message"]
    # Validator refusals: counted by reason in the manifest's inputs, one message each.
    counts = manifest["inputs"][0]["skipped"]
    want_counts = _validator_counts()
    assert counts == want_counts
    invalid = [r for r in skipped["records"] if "id" not in r]
    assert len(invalid) == sum(want_counts.values()) == skipped["count"] - len(encode_skips)
    for r in invalid:
        assert r["message"].startswith(f"{corpus}:"), r
    by_reason: dict[str, int] = {}
    for r in invalid:  # each refused record carries the validator's reason key
        by_reason[r["validator_reason"]] = by_reason.get(r["validator_reason"], 0) + 1
    assert by_reason == want_counts
    for reason, text in LINE_FAILURES.items():
        assert any(text in r["message"] for r in invalid), reason


def test_tokenize_rerun_on_the_bad_corpus_is_a_no_op(tokenized, tokenizer_dir, corpus, capsys):
    out, _, _ = tokenized
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    argv = ["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
            "--workers", "0", "--docs-per-shard", "4"]  # fmt: skip
    assert cli(argv) == 0
    assert "(6 already done)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before


def test_tokenize_refuses_missing_or_corrupt_tokenizers_and_inputs(tokenizer_dir, corpus,
                                                                    tmp_path, capsys):  # fmt: skip
    import shutil

    bad_tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, bad_tok)
    weights = bad_tok / "image" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    cases = [
        (corpus, tmp_path / "nope", "nope: no vocabulary manifest"),
        (corpus, bad_tok, "weights.pt: checksum mismatch"),
        (tmp_path / "nope.jsonl", tokenizer_dir, "nope.jsonl: no such documents file"),
    ]
    for jsonl, tok, message in cases:
        rc = cli(["tokenize", str(jsonl), "--tokenizers", str(tok), "--out",
                  str(tmp_path / "out"), "--workers", "0"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err, err


def test_validate_names_every_bad_record(corpus, capsys):
    assert cli(["validate", str(corpus), "--show", "100", "--no-media"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    n_bad = sum(1 for s, _ in EXPECTED.values() if s == "validate") + len(LINE_FAILURES)
    assert f"skipped: {n_bad}" in out.out
    bad_lines = [line for line in out.out.splitlines() if line.startswith(f"  {corpus}:")]
    assert len(bad_lines) == n_bad
    lines = _line_of(corpus)
    for doc_id, (stage, reason) in EXPECTED.items():
        if stage == "validate" and doc_id in lines:
            assert any(f"{corpus}:{lines[doc_id]}:" in b for b in bad_lines), doc_id
        if stage == "validate":
            assert f"{reason}: " in out.out


def test_validate_opening_media_predicts_what_tokenize_skips(corpus, tokenized, capsys):
    """validate reads each media file's header: the records it flags are exactly the
    validator's plus media tokenize refuses; no record tokenize keeps is flagged."""
    from native_mm.documents import SkipReport, read_documents

    report = SkipReport()
    list(read_documents(corpus, on_error="skip", report=report, open_media=True))
    lines, by_line = _line_of(corpus), {}
    for source, _ in report.messages:
        by_line[int(source.rsplit(":", 1)[1])] = source
    flagged = {doc_id for doc_id, n in lines.items() if n in by_line}
    expected_validate = {i for i, (stage, _) in EXPECTED.items() if stage == "validate"}
    encode = {i for i, (stage, _) in EXPECTED.items() if stage == "encode"}
    kept = {i for i, (stage, _) in EXPECTED.items() if stage == "kept"}
    assert expected_validate & set(lines) <= flagged
    assert not flagged & kept, flagged & kept  # no false alarm
    predicted = flagged & encode
    # what a header cannot show: NaN samples, a JPEG cut after its header
    assert encode - predicted <= {"audio-nan", "jpeg-truncated", "jpeg-corrupt"}, encode - predicted
    assert cli(["validate", str(corpus)]) == 1
    assert f"bad_media: {len(predicted)}" in capsys.readouterr().out


def test_validate_missing_file_is_one_line_error(tmp_path, capsys):
    assert cli(["validate", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err


def _tiny_checkpoint(tokenizer_dir: Path, folder: Path, block_size: int) -> Path:
    """A tiny random transformer over the tokenizer set, saved as an inference checkpoint."""
    from native_mm.checkpoint import save_checkpoint
    from native_mm.model import ModelConfig, Transformer

    tset = TokenizerSet.load(tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny", vocab_size=tset.vocab.size, n_layer=1, n_embd=32, block_size=block_size
    )
    path = folder / "model.pt"
    save_checkpoint(path, Transformer(cfg), tset.manifest())
    return path


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random transformer saved as a plain inference checkpoint."""
    return _tiny_checkpoint(tokenizer_dir, tmp_path_factory.mktemp("ckpt"), 1024)


BAD_PROMPTS = [
    ("image", "truncated.png"), ("image", "zero.png"), ("image", "corrupt.png"),
    ("image", "truncated.jpg"), ("image", "corrupt.jpg"), ("image", "notes.png"),
    ("image", "bomb.png"), ("image", "a_dir.png"), ("image", "nope.png"),
    ("audio", "unreadable.wav"), ("audio", "empty.wav"), ("audio", "nan.wav"),
    ("audio", "truncated.wav"), ("audio", "notes.png"),
]  # fmt: skip


def test_generate_refuses_bad_prompt_files_naming_them(checkpoint, tokenizer_dir, corpus,
                                                       tmp_path, capsys):  # fmt: skip
    media = corpus.parent / "media"
    base = ["generate", "--ckpt", str(checkpoint), "--tokenizers", str(tokenizer_dir),
            "--max-new-tokens", "3", "--output-modality", "text"]  # fmt: skip
    # sanity: the same command with good media works
    for kind, name in [("image", "good.png"), ("image", "cmyk.jpg"), ("audio", "six.wav")]:
        rc = cli([*base, "--text", "hi", f"--{kind}", str(media / name), "--out", str(tmp_path)])
        assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    for kind, name in BAD_PROMPTS:
        rc = cli([*base, "--text", "hi", f"--{kind}", str(media / name), "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 1, (name, err)
        assert name in err and "prompt segment 1" in err and "Traceback" not in err, err


def test_generate_refuses_a_prompt_longer_than_the_context(checkpoint, tokenizer_dir, tmp_path,
                                                           capsys):  # fmt: skip
    rc = cli(["generate", "--ckpt", str(checkpoint), "--tokenizers", str(tokenizer_dir),
              "--text", "lorem ipsum " * 600, "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "the model takes 1022 (block_size=1024 less 2" in err, err
    assert "Traceback" not in err


def test_generate_refuses_corrupt_and_foreign_checkpoints(checkpoint, tokenizer_dir, tmp_path,
                                                          capsys):  # fmt: skip
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for ckpt in (truncated, foreign, tmp_path / "missing.pt"):
        rc = cli(["generate", "--ckpt", str(ckpt), "--tokenizers", str(tokenizer_dir),
                  "--text", "hi", "--out", str(tmp_path)])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and ckpt.name in err and "Traceback" not in err, err


# ---- 2. training guards: injected NaN losses and gradients --------------------------------
class InjectNaN(L.Callback):
    """Makes the loss (``loss_steps``) or one gradient (``grad_steps``) NaN at given steps.

    The last instance made is ``InjectNaN.last`` (the CLI builds it). Records every
    parameter before and after each step, so a test can check that the injected steps left
    the weights unchanged.
    """

    last: InjectNaN | None = None

    def __init__(self, loss_steps: list[int] | None = None, grad_steps: list[int] | None = None):
        self.loss_steps, self.grad_steps = set(loss_steps or []), set(grad_steps or [])
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}
        self._hook = None
        InjectNaN.last = self

    @staticmethod
    def _flat(pl_module) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in pl_module.model.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        self.before[step] = self._flat(pl_module)
        if step in self.loss_steps:
            self._hook = pl_module.model.lm_head.register_forward_hook(
                lambda mod, args, out: out * float("nan")
            )

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.grad_steps:
            p = next(p for p in pl_module.model.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.after[trainer.global_step - 1] = self._flat(pl_module)


@pytest.fixture(scope="module")
def text_shards_dir(tmp_path_factory) -> Path:
    from tests.doubles import text_shards

    return text_shards(tmp_path_factory.mktemp("txt") / "shards", n_docs=60)


def _fit_injecting(args: list[str], **inject: str) -> tuple[int, InjectNaN]:
    """``native-mm fit`` through ``cli.main`` with an :class:`InjectNaN` callback."""
    extra = ["--trainer.callbacks+=tests.test_reliability.InjectNaN"]
    extra += [f"--trainer.callbacks.{k}={v}" for k, v in inject.items()]
    InjectNaN.last = None
    rc = cli([*args, *extra])
    return rc, InjectNaN.last


def test_nonfinite_steps_are_skipped_counted_and_never_checkpointed(text_shards_dir, tmp_path):
    from tests.doubles import fit_args, step_losses

    out = tmp_path / "run"
    rc, inject = _fit_injecting(fit_args(text_shards_dir, out, 7), loss_steps="[2]",
                                grad_steps="[4]")  # fmt: skip
    assert rc == 0
    for s in (2, 4):  # the injected steps did not move the weights
        assert torch.equal(inject.before[s], inject.after[s]), s
    for s in (1, 3, 5):  # the others did
        assert not torch.equal(inject.before[s], inject.after[s]), s
    counts = step_losses(out, "train/nonfinite_steps")
    assert max(counts.values()) == 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["nonfinite_steps"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_too_many_nonfinite_steps_stop_the_run_with_a_clear_message(
    text_shards_dir, tmp_path, capsys
):
    from tests.doubles import fit_args

    out = tmp_path / "run"
    args = fit_args(text_shards_dir, out, 8, "--model.max_nonfinite_steps", "2")
    assert _fit_injecting(args, loss_steps="[1, 2, 3, 4, 5]")[0] == 1
    err = capsys.readouterr().err
    assert "training stopped at step" in err and "max_nonfinite_steps=2" in err
    assert "Traceback" not in err
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), ckpt


def test_checkpoint_of_nonfinite_weights_is_refused():
    from native_mm.model import ModelConfig
    from native_mm.training.module import LanguageModule, NonFiniteError

    m = LanguageModule(ModelConfig.from_name("tiny", vocab_size=64, n_layer=1, n_embd=32))
    m.configure_model()
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)  # finite: fine
    with torch.no_grad():
        m.model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint.*lm_head"):
        m.on_save_checkpoint({"state_dict": m.state_dict()})


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


# ---- 4. fuzzing: document validator, sequence decode, constrained decoding ----------------
# A small number of examples in CI; ``-m slow`` runs >= 10,000 of each.
CI_EXAMPLES, SLOW_EXAMPLES = 100, 10_000


def fuzz(n: int):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
_PATHS = st.sampled_from(
    ["media/a.png", "media/a.wav", "../x.png", "../../etc/passwd", "/etc/passwd", "a/../../b",
     "", "a\x00b", "media/../media/a.png", "media/link.png", "./media/a.png", "\\\\srv\\x",
     "C:\\x", "media", "nope.png", "media/../../corpus/media/a.png"]
) | st.text(max_size=10)  # fmt: skip
_WEIRD = st.text(st.characters(codec=None, categories=["Cs", "Co", "Cc", "Zs"]), max_size=4)
_SEGMENT = st.one_of(
    st.builds(lambda k, v, extra: {k: v, **extra}, st.sampled_from(["text", "image", "audio"]),
              _PATHS | _WEIRD | _JSON,
              st.dictionaries(st.sampled_from(["loss", "video", "text"]), _JSON, max_size=1)),
    _JSON,
)  # fmt: skip
_RECORD = st.one_of(
    st.fixed_dictionaries({
        "id": st.sampled_from(["a", "b", "c", ""]) | _WEIRD | _JSON,
        "segments": st.lists(_SEGMENT, max_size=4) | _JSON,
    }),
    _JSON,
)  # fmt: skip
_LINE = st.one_of(
    st.tuples(_RECORD, st.booleans()).map(lambda r: json.dumps(r[0], ensure_ascii=r[1]).encode(
        "utf-8", "surrogatepass")),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
)  # fmt: skip


def _validator_property(lines: list[bytes]) -> None:
    import tempfile

    from native_mm.documents import DocumentError, SkipReport, read_documents

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        (root / "media").mkdir(parents=True)
        (root / "media" / "a.png").write_bytes(b"x")
        (root / "media" / "a.wav").write_bytes(b"x")
        (Path(tmp) / "out.png").write_bytes(b"x")
        os.symlink(Path(tmp) / "out.png", root / "media" / "link.png")
        path = root / "docs.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        report = SkipReport(max_messages=10**6)
        docs = list(read_documents(path, on_error="skip", report=report))
        blank = 0
        for raw in lines:
            with contextlib.suppress(UnicodeDecodeError):
                blank += not raw.decode("utf-8").strip()
        assert report.documents == len(docs)
        assert report.documents + report.skipped == len(lines) - blank
        assert len({d.id for d in docs}) == len(docs)
        real_root = os.path.realpath(root)
        for d in docs:
            assert isinstance(d.id, str) and d.id
            d.id.encode("utf-8")  # no lone surrogates
            for s in d.segments:
                assert s.kind in ("text", "image", "audio") and isinstance(s.loss, bool)
                s.value.encode("utf-8")
                if s.kind != "text":
                    real = os.path.realpath(s.value)
                    assert os.path.commonpath([real, real_root]) == real_root, s.value
                    assert os.path.isfile(real)
        for source, message in report.messages:
            assert message.startswith(f"{source}:") and source.startswith(f"{path}:")
        try:
            strict = list(read_documents(path, on_error="raise"))
        except DocumentError as e:
            assert e.reason in report.counts and str(e).startswith(f"{path}:")
        else:
            assert not report.skipped and [d.id for d in strict] == [d.id for d in docs]


@fuzz(CI_EXAMPLES)
@given(st.lists(_LINE, max_size=8))
def test_fuzz_document_validator(lines):
    _validator_property(lines)


@pytest.mark.slow
@fuzz(SLOW_EXAMPLES)
@given(st.lists(_LINE, max_size=8))
def test_fuzz_document_validator_10k(lines):
    _validator_property(lines)


FUZZ_VOCAB = Vocab(text_size=20, image_codes=16, audio_codes=8, audio_levels=2, image_max_grid=4)


_SPECIAL_IDS = list(range(len(FUZZ_VOCAB.specials)))
_BOUNDARIES = sorted({i for r in FUZZ_VOCAB.ranges.values() for i in (r.start, r.stop - 1)})
_IDS = st.lists(
    st.sampled_from(_SPECIAL_IDS + _BOUNDARIES) | st.integers(0, FUZZ_VOCAB.size - 1)
    | st.integers(-3, FUZZ_VOCAB.size + 3), max_size=60,
)  # fmt: skip


def _decode_property(ids: list[int]) -> None:
    from native_mm.sequence import SequenceCodec, SequenceError

    codec = SequenceCodec(FUZZ_VOCAB)
    if any(i < 0 or i >= FUZZ_VOCAB.size for i in ids):
        with pytest.raises(SequenceError, match="position"):
            codec.decode_report(ids)
        return
    report = codec.decode_report(ids, strict=False)
    try:
        strict = codec.decode(ids, strict=True)
    except SequenceError as e:
        assert report.errors and str(e) == report.errors[0]
    else:
        assert not report.errors and strict == report.spans
    # whatever decoded is well-formed: it re-encodes and decodes to the same spans
    again = codec.decode(codec.encode(report.spans).ids, strict=True)
    assert again == merge_text(report.spans)


@fuzz(CI_EXAMPLES)
@given(_IDS)
def test_fuzz_sequence_decode(ids):
    _decode_property(ids)


@pytest.mark.slow
@fuzz(SLOW_EXAMPLES)
@given(_IDS)
def test_fuzz_sequence_decode_10k(ids):
    _decode_property(ids)


_SPEC = st.fixed_dictionaries({
    "modality": st.sampled_from([None, "text", "image", "audio"]),
    "image_size": st.none() | st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "audio_frames": st.none() | st.integers(1, 5),
    "max_image_grid": st.none() | st.integers(1, 4),
})  # fmt: skip


def _constraint_property(spec: dict, budget: int, seed: int, rows: int) -> None:
    """Random walks through the allowed ids: every row stays closable and decodes cleanly."""
    from native_mm.constraints import DONE, TEXT_STATE, DecodeConstraint, OutputSpec
    from native_mm.sequence import SequenceCodec
    from native_mm.vocab import BOS, PAD

    v = FUZZ_VOCAB
    codec = SequenceCodec(v)
    con = DecodeConstraint(codec, rows, v.size + 5, OutputSpec(**spec))
    rng = np.random.default_rng(seed)
    out = [[BOS] for _ in range(rows)]
    con.state_after([torch.tensor([BOS])] * rows)
    for step in range(budget):
        mask = con.allowed(budget - step)
        assert not mask[:, v.size :].any()  # never an id outside the vocabulary
        toks = []
        for b in range(rows):
            allowed = np.flatnonzero(mask[b].numpy())
            assert allowed.size, (b, int(con.state[b]), spec, budget - step)
            special = allowed[allowed < len(v.specials)]
            pick = special if special.size and rng.random() < 0.3 else allowed
            toks.append(int(rng.choice(pick)))
        con.advance(torch.tensor(toks))
        for b, t in enumerate(toks):
            out[b].append(t)
        if bool((con.state == DONE).all()):
            break
    for b in range(rows):
        assert int(con.state[b]) in (TEXT_STATE, DONE), (spec, budget, out[b])
        ids = [t for t in out[b] if t != PAD] if int(con.state[b]) == DONE else out[b]
        spans = codec.decode(ids, strict=True)  # every span closed and well-formed
        for s in spans:
            assert spec["modality"] in (None, s.kind) or s.kind == "text"
            if s.kind == "image" and spec["image_size"]:
                assert s.codes.shape == tuple(spec["image_size"])
            if s.kind == "image" and spec["max_image_grid"] and not spec["image_size"]:
                assert max(s.codes.shape) <= spec["max_image_grid"]
            if s.kind == "audio" and spec["audio_frames"]:
                assert s.codes.shape[1] == spec["audio_frames"]


_CONSTRAINT_ARGS = (_SPEC, st.integers(1, 40), st.integers(0, 2**32 - 1), st.integers(1, 3))


@fuzz(CI_EXAMPLES)
@given(*_CONSTRAINT_ARGS)
def test_fuzz_decode_constraint(spec, budget, seed, rows):
    _constraint_property(spec, budget, seed, rows)


@pytest.mark.slow
@fuzz(SLOW_EXAMPLES)
@given(*_CONSTRAINT_ARGS)
def test_fuzz_decode_constraint_10k(spec, budget, seed, rows):
    _constraint_property(spec, budget, seed, rows)


# ---- the other entry points: tokenizer training and fit over the dirty corpus ---------------
def test_text_tokenizer_training_counts_bad_lines_and_records(corpus, tmp_path, capsys):
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_bytes(b"good line\n\xff\xfe not UTF-8\nanother line caf\xc3\xa9\n")
    out = tmp_path / "text"
    argv = ["tokenizer", "train", "text", "--config", str(REPO / "tokenizers/text/default.yaml"),
            "--out", str(out), "--input", str(corpus), "--input", str(bad_txt),
            "vocab_size=400"]  # fmt: skip
    assert cli(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    log = json.loads((out / "train_log.json").read_text())
    assert log["skipped_bad_utf8_lines"] == 1
    # media are not opened here: every record the validator refuses except missing media
    refused = [r for s, r in EXPECTED.values() if s == "validate" and r != "missing_media"]
    assert log["skipped_documents"] == len(refused) + len(LINE_FAILURES)


def test_fit_on_the_dirty_corpus_shards(tokenized, tmp_path, capsys):
    """Documents longer than the context (a 30k-token audio clip, 1,600-token text) are cut
    into training windows by packing; the run trains and checkpoints normally."""
    from tests.doubles import fit_args, step_losses

    out_dir, _, _ = tokenized
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["tokens"] > 30 * 32  # far longer than one 32-token context
    assert cli(fit_args(out_dir, tmp_path / "run", 3)) == 0
    losses = step_losses(tmp_path / "run")
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) for v in losses.values())


def test_fit_refuses_a_corrupted_shard_naming_it(tokenized, tmp_path, capsys):
    import shutil

    from tests.doubles import fit_args

    src, _, _ = tokenized
    bad = tmp_path / "shards"
    shutil.copytree(src, bad)
    victim = max((bad / "shards").glob("*.ids.bin"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[3] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert cli(fit_args(bad, tmp_path / "run", 2)) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "corrupted" in err and "Traceback" not in err


# ---- 5. eval, image/audio tokenizer training, checkpoint checksums, long audio -------------
def _run(argv: list[str], capsys) -> tuple[int, str]:
    """A verb through ``cli.main`` -> (exit code, stderr); never a traceback."""
    rc = cli(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_eval_refuses_bad_checkpoints_tokenizers_and_out_dirs(
    checkpoint, tokenizer_dir, text_tokenizer, tmp_path, capsys
):
    import shutil

    from native_mm.io import checksum_path

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    flipped = tmp_path / "flipped.pt"  # one byte changed after it was written
    shutil.copy(checkpoint, flipped)
    shutil.copy(checksum_path(checkpoint), checksum_path(flipped))
    _flip_byte(flipped)
    other = tiny_tokenizer_set(text_tokenizer, tmp_path / "other_set", seed=1)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = tmp_path / "eval"
    cases = [
        (tmp_path / "missing.ckpt", tokenizer_dir, out, "missing.ckpt: no such checkpoint file"),
        (truncated, tokenizer_dir, out, "truncated.ckpt: cannot load checkpoint"),
        (foreign, tokenizer_dir, out, "foreign.ckpt: not a native-mm checkpoint"),
        (flipped, tokenizer_dir, out, "flipped.pt: corrupted checkpoint (sha256"),
        (checkpoint, other, out, f"{checkpoint.name}: audio tokenizer fingerprint mismatch"),
        (checkpoint, tmp_path / "nope", out, "nope: no vocabulary manifest there"),
        (checkpoint, tokenizer_dir, a_file, "a_file: --out exists and is not a directory"),
        (checkpoint, tokenizer_dir, a_file / "sub", "a_file/sub: cannot create the output dir"),
    ]
    for ckpt, tok, dest, message in cases:
        rc, err = _run(["eval", "--ckpt", str(ckpt), "--tokenizers", str(tok), "--out", str(dest)],
                       capsys)  # fmt: skip
        assert rc == 1 and message in err, (message, err)


def test_checksum_survives_a_kill_between_its_two_renames(tmp_path, monkeypatch):
    import native_mm.io as nio

    path = tmp_path / "last.ckpt"
    nio.write_checked(path, nio.torch_bytes({"step": 1}))

    def killed(p, data):  # the process dies after the checksum file was renamed into place
        raise KeyboardInterrupt

    monkeypatch.setattr(nio, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        nio.write_checked(path, nio.torch_bytes({"step": 2}))
    monkeypatch.undo()
    assert nio.load_torch(path) == {"step": 1}  # the old file still verifies (previous_sha256)
    nio.write_checked(path, nio.torch_bytes({"step": 3}))
    assert nio.load_torch(path) == {"step": 3}
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"last\.ckpt: corrupted checkpoint"):
        nio.load_torch(path)


def test_checkpoint_write_removes_temp_files_of_a_killed_write(tmp_path):
    import native_mm.io as nio
    from native_mm.training.checkpoint_io import ChecksummedCheckpointIO

    stale = [tmp_path / ".last.ckpt.k1ll3d.tmp", tmp_path / ".last.ckpt.sha256.json.x.tmp"]
    keep = [tmp_path / ".step0000003.ckpt.k1ll3d.tmp", tmp_path / "last.ckpt.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half written")
    nio.write_checked(tmp_path / "last.ckpt", nio.torch_bytes({"step": 1}))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert nio.load_torch(tmp_path / "last.ckpt") == {"step": 1}
    # Lightning's checkpoint IO owns its folder: step checkpoints' temp files go too
    ChecksummedCheckpointIO().save_checkpoint({"step": 4}, tmp_path / "step0000004.ckpt")
    assert [p.exists() for p in keep] == [False, True]


def test_fit_checkpoints_carry_checksums_and_a_corrupted_one_is_refused(
    text_shards_dir, tmp_path, capsys
):
    from native_mm.checkpoint import load_checkpoint
    from native_mm.io import checksum_path, verify_checked
    from tests.doubles import fit_args

    out = tmp_path / "run"
    assert cli(fit_args(text_shards_dir, out, 3)) == 0
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step0000003.ckpt"]
    # one checksum per checkpoint: the removed step checkpoints took theirs with them
    assert sorted((out / "checkpoints").glob("*.sha256.json")) == [checksum_path(p) for p in ckpts]
    assert all(verify_checked(p) for p in ckpts)
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # plain data only
    _flip_byte(last)
    with pytest.raises(ValueError, match=r"last\.ckpt: corrupted checkpoint"):
        load_checkpoint(last)
    rc, err = _run(fit_args(text_shards_dir, out, 5, "--ckpt_path", "last"), capsys)
    assert rc == 1 and "last.ckpt: corrupted checkpoint" in err, err


def test_tokenize_skips_audio_longer_than_max_seconds(tokenizer_dir, corpus, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    import soundfile

    from native_mm.tokenizers.audio import read_audio
    from native_mm.tokenizers.base import MediaTooLong

    out = tmp_path / "out"
    rc, _ = _run(["tokenize", str(corpus), "--tokenizers", str(tokenizer_dir), "--out", str(out),
                  "--workers", "0", "--max-audio-seconds", "10"], capsys)  # fmt: skip
    assert rc == 0
    records = json.loads((out / "skipped.json").read_text())["records"]
    too_long = [r for r in records if r["reason"] == "MediaTooLong"]
    assert [r["id"] for r in too_long] == ["audio-long"]
    assert f"docs.jsonl:{_line_of(corpus)['audio-long']}" in too_long[0]["message"]
    assert "long.wav: 20.0 s of audio is longer than max_seconds=10" in too_long[0]["message"]
    assert _kept(out) == {k for k, (s, _) in EXPECTED.items() if s == "kept"} - {"audio-long"}
    # the duration comes from the header: no sample of a too-long file is read
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: pytest.fail("samples were read"))
    with pytest.raises(MediaTooLong, match="long.wav"):
        read_audio(corpus.parent / "media" / "long.wav", max_seconds=10)


# image files of the bad corpus that the image reader refuses
BAD_IMAGES = {"truncated.png", "zero.png", "corrupt.png", "truncated.jpg", "zero.jpg",
              "corrupt.jpg", "notes.png", "bomb.png"}  # fmt: skip
TINY_VQGAN = ["model.channels=8", "model.channel_mult=[1,1,1]", "model.z_channels=8",
              "model.codebook_size=32", "batch_size=4", "sample_every=0", "sample_count=4",
              "trainer.max_steps=1", "trainer.log_every=1"]  # fmt: skip


def test_image_tokenizer_training_skips_and_counts_bad_images(corpus, tmp_path, capsys):
    from native_mm.tokenizers.image import ImageTokenizer
    from native_mm.tokenizers.image_train import ImageTrainSpec, build_dataset
    from native_mm.tokenizers.trainer import DataReport

    # A folder: every image file of the bad corpus (a_dir.png is a directory, not a file).
    media = corpus.parent / "media"
    report = DataReport(media)
    ds = build_dataset(ImageTrainSpec(resolution=16), str(media), train=True, report=report)
    assert {Path(r["file"]).name for r in report.records} == BAD_IMAGES
    # good.png/.jpg, 1x1, 16-bit, CMYK and the symlink (a folder is the user's own: followed)
    assert len(ds) == report.used == 6 and dict(report.counts) == {"MediaError": 8}
    # The documents JSONL through the verb: refused records and unreadable images are
    # counted in data_report.json, the 4 good images train and the tokenizer is saved.
    out = tmp_path / "image"
    rc, err = _run(["tokenizer", "train", "image", "--config",
                    str(REPO / "tokenizers/image/digits.yaml"), "--out", str(out),
                    f"data={corpus}", *TINY_VQGAN], capsys)  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "data_report.json").read_text())["train"]
    assert rep["used"] == 4 and rep["reasons"] == {"MediaError": 8, **_validator_counts()}
    assert f"train data {corpus}: 4 used, 20 skipped" in err
    files = {Path(r["file"]).name: r["message"] for r in rep["records"] if "file" in r}
    assert set(files) == BAD_IMAGES and all(name in m for name, m in files.items())
    assert "bomb.png: decompression bomb refused" in files["bomb.png"]
    assert all(r["message"].startswith(f"{corpus}:") for r in rep["records"] if "source" in r)
    assert ImageTokenizer.load(out).codebook_size == 32


def test_audio_tokenizer_training_skips_and_counts_bad_audio(corpus, tmp_path, capsys):
    from native_mm.tokenizers.audio import AudioTokenizer

    out = tmp_path / "audio"
    argv = ["tokenizer", "train", "audio", "--config", str(REPO / "tokenizers/audio/tiny.yaml"),
            "--out", str(out), f"data.source={corpus}", "data.max_seconds=10",
            "trainer.max_steps=1", "n_samples=1"]  # fmt: skip
    rc, err = _run(argv, capsys)
    assert rc == 0
    rep = json.loads((out / "data_report.json").read_text())["train"]
    # used: good, 44.1 kHz stereo, 6 channels, 11.025 kHz (resampled and mixed down)
    assert rep["used"] == 4
    assert rep["reasons"] == {"MediaError": 4, "MediaTooLong": 1, **_validator_counts()}
    files = {Path(r["file"]).name: r for r in rep["records"] if "file" in r}
    assert set(files) == {"unreadable.wav", "empty.wav", "nan.wav", "truncated.wav", "long.wav"}
    assert all(name in r["message"] for name, r in files.items())
    assert files["long.wav"]["reason"] == "MediaTooLong"
    assert "NaN or infinite" in files["nan.wav"]["message"]
    assert "no audio samples" in files["empty.wav"]["message"]
    assert AudioTokenizer.load(out).codebook_size == 16
    # a resume from a corrupted last.ckpt is refused, naming it
    _flip_byte(out / "checkpoints" / "last.ckpt")
    rc, err = _run([*argv, "trainer.max_steps=2"], capsys)
    assert rc == 1 and "last.ckpt: corrupted checkpoint" in err, err


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


@pytest.fixture(scope="module")
def eval_checkpoint(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random transformer with room for the held-out clips' prompts (~1,150 tokens
    with the tiny EnCodec)."""
    return _tiny_checkpoint(tokenizer_dir, tmp_path_factory.mktemp("eval_ckpt"), 4096)


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


def test_every_torch_load_in_the_package_is_weights_only():
    """Project-written files are only ever unpickled with ``weights_only=True`` (all go
    through ``native_mm.io.load_torch``); this checks the source for any other call."""
    import ast

    calls = []
    for path in sorted((REPO / "native_mm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "load"
                and getattr(f.value, "id", "") == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), calls
    assert all(where.startswith("native_mm/io.py:") for where, _ in calls), calls  # one reader
