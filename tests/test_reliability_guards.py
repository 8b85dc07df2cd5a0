"""Reliability guards: non-finite losses and gradients in training, and fuzzing of the
document validator, sequence decoding and constrained decoding."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from native_mm.cli import main as cli
from native_mm.vocab import Vocab
from tests.test_sequence import merge_text


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


def _fit_injecting(args: list[str], **inject: str) -> tuple[int, InjectNaN]:
    """``native-mm fit`` through ``cli.main`` with an :class:`InjectNaN` callback."""
    extra = ["--trainer.callbacks+=tests.test_reliability_guards.InjectNaN"]
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
