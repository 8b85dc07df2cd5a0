"""Training: packing, dropouts, mixtures, resumable sampling, loss, exact resume, DDP, bf16."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from native_mm.checkpoint import CheckpointError, load_checkpoint
from native_mm.layouts import AudioFrameMajor, Layout
from native_mm.model import ModelConfig
from native_mm.training.cli import make_cli
from native_mm.training.data import (
    AudioCodes,
    DropoutConfig,
    PackedDataset,
    ResumableBatchSampler,
    ShardDataModule,
    SourceSpec,
    transform_document,
)
from native_mm.training.module import (
    LanguageModule,
    cosine_schedule,
)
from native_mm.training.shard_reader import ShardSet
from native_mm.training.shards import ShardError, write_shards_from_ids
from native_mm.vocab import BOA, BOI, BOS, EOA, EOI, Vocab, VocabError
from tests.doubles import corpus_shards, fit_args, random_docs, step_losses, text_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return text_shards(tmp_path_factory.mktemp("txt") / "shards", n_docs=120)


@pytest.fixture(scope="module")
def mm_shards(tmp_path_factory) -> Path:
    return corpus_shards(tmp_path_factory.mktemp("mm"), n_docs=30)


# ---- data ------------------------------------------------------------------------------
def test_packing_boundaries_and_mask(mm_shards):
    ss = ShardSet(mm_shards)
    ds = PackedDataset([ss], [1.0], seq_len=48, seed=3)
    for i in range(20):
        item = ds[i]
        x, y, m = item["input"].numpy(), item["target"].numpy(), item["mask"].numpy()
        assert x.shape == y.shape == m.shape == (48,)
        assert x[0] == BOS  # every window starts at a document boundary
        np.testing.assert_array_equal(x[1:], y[:-1])
        assert not m[y == BOS].any()  # never predict the next document's <bos>
    # determinism: a fresh dataset gives the same samples
    ds2 = PackedDataset([ShardSet(mm_shards)], [1.0], seq_len=48, seed=3)
    for i in (0, 7, 1000):
        for k in ("input", "target", "mask"):
            assert torch.equal(ds[i][k], ds2[i][k])


def test_prompt_loss_flags_reach_the_mask(mm_shards):
    """Documents' "loss": false segments (the text "sound" before audio) are not targets."""
    ss = ShardSet(mm_shards)
    masked_text = 0
    for d in range(len(ss)):
        ids, loss = ss.document(d)
        boa = np.flatnonzero(ids == BOA)
        for b in boa:
            assert not loss[b - 5 : b].any()  # "sound" (5 byte tokens), "loss": false
            assert loss[b : np.flatnonzero(ids == EOA)[0] + 1].all()  # the audio span is
            masked_text += 5
        assert loss[-1]  # <eos> is a target
    assert masked_text > 0


def test_modality_and_conditioning_dropout():
    rng = np.random.default_rng(0)
    t = [20, 21, 22]
    ids = np.array([BOS, *t, BOI, 200, 201, EOI, 23, BOA, 300, EOA, BOS + 1], dtype=np.int64)
    loss = np.ones(len(ids), bool)
    loss[0] = False
    # drop every image span, keep audio
    out, ol = transform_document(ids, loss, DropoutConfig(image_dropout=1.0), rng)
    assert BOI not in out and EOI not in out and BOA in out
    assert list(out) == [BOS, *t, 23, BOA, 300, EOA, BOS + 1]
    out, _ = transform_document(ids, loss, DropoutConfig(audio_dropout=1.0), rng)
    assert BOA not in out and BOI in out
    # conditioning dropout: a media span keeps only <bos> before it (generation's
    # unconditional prompt is <bos> + opener); what follows the span stays
    out, ol = transform_document(ids, loss, DropoutConfig(cond_dropout=1.0), rng)
    assert list(out) == [BOS, BOA, 300, EOA, BOS + 1]  # the audio span resets again
    first = [BOS, BOI, 200, 201, EOI, 23, BOA, 300, EOA, BOS + 1]
    hits = {
        tuple(transform_document(ids, loss, DropoutConfig(cond_dropout=0.5), rng)[0])
        for _ in range(200)
    }
    assert tuple(first) in hits and tuple(ids) in hits
    # probability 0 is the identity
    out, ol = transform_document(ids, loss, DropoutConfig(), rng)
    assert out is ids
    # about p of the spans are dropped
    kept = [
        BOI in transform_document(ids, loss, DropoutConfig(image_dropout=0.3), rng)[0]
        for _ in range(2000)
    ]
    assert abs(1 - np.mean(kept) - 0.3) < 0.04


def test_audio_prompt_noise_replaces_prompt_codes_within_their_level(mm_shards):
    """Codes of an audio prompt (no loss) are redrawn within their RVQ level; targets never."""
    vocab = Vocab(text_size=300, image_codes=16, audio_codes=32, audio_levels=2)
    audio = AudioCodes.of(vocab, Layout(audio=AudioFrameMajor(2)))
    prompt = AudioFrameMajor(2).encode(np.zeros((2, 50), np.int64), vocab)
    target = AudioFrameMajor(2).encode(np.ones((2, 5), np.int64), vocab)
    ids = np.concatenate([[BOS, 20], prompt, [21], target, [BOS + 1]]).astype(np.int64)
    loss = np.zeros(len(ids), bool)
    loss[len(prompt) + 3 :] = True  # the answer clip and <eos>
    rng = np.random.default_rng(0)
    out, ol = transform_document(ids, loss, DropoutConfig(audio_prompt_noise=0.3), rng, audio)
    assert ol is loss and len(out) == len(ids)
    changed = np.flatnonzero(out != ids)
    assert 15 < changed.size < 45  # ~30% of the prompt's 100 codes
    assert changed.min() > 2 and changed.max() < len(prompt) + 1  # inside the prompt's codes
    codes, _, err = AudioFrameMajor(2).decode(out, 2, vocab)  # still a valid two-level span
    assert not err and codes.shape == (2, 50) and (codes < 32).all()
    # the same noise on a document with everything as target changes nothing
    out, _ = transform_document(
        ids, np.ones(len(ids), bool), DropoutConfig(audio_prompt_noise=1), rng, audio
    )
    np.testing.assert_array_equal(out, ids)
    with pytest.raises(ValueError, match="audio codes"):
        PackedDataset(
            [ShardSet(mm_shards)], [1.0], 8, dropout=DropoutConfig(audio_prompt_noise=0.1)
        )


def test_mixture_weights(tmp_path):
    vocab = Vocab(text_size=50)
    t0 = vocab.ranges["text"].start
    a = [(np.array([BOS, t0, t0, 2]), np.ones(4, bool))] * 10
    b = [(np.array([BOS, t0 + 1, t0 + 1, 2]), np.ones(4, bool))] * 10
    write_shards_from_ids(tmp_path / "a", a, vocab, source="a")
    write_shards_from_ids(tmp_path / "b", b, vocab, source="b")
    ds = PackedDataset([ShardSet(tmp_path / "a"), ShardSet(tmp_path / "b")], [3, 1], seq_len=3)
    frac_a = np.mean([int(ds[i]["input"][1]) == t0 for i in range(2000)])
    assert abs(frac_a - 0.75) < 0.04


def test_sources_must_agree_on_the_layout(tmp_path):
    """Shards record their layout; audio-free ones leave audio open; a conflict names both."""
    one = Layout(audio=AudioFrameMajor(1))
    vocab = Vocab(text_size=50, audio_codes=8, audio_levels=4)
    t0, a0 = vocab.ranges["text"].start, vocab.audio_range(0).start
    text = [(np.array([BOS, t0, t0, 2]), np.ones(4, bool))] * 4
    audio = [(np.array([BOS, BOA, a0, EOA, 2]), np.ones(5, bool))] * 4
    write_shards_from_ids(tmp_path / "t", text, vocab, source="t", layout=one)
    write_shards_from_ids(tmp_path / "a1", audio, vocab, source="a1", layout=one)
    write_shards_from_ids(tmp_path / "a4", audio, vocab, source="a4")
    assert ShardSet(tmp_path / "t").manifest["layout"]["audio"] is None  # no audio tokens
    a4 = ShardSet(tmp_path / "a4").manifest["layout"]["audio"]
    assert a4 == {"name": "frame_major", "levels": 4}  # None = all of the vocab's
    mixed = ShardDataModule([SourceSpec(str(tmp_path / "t")), SourceSpec(str(tmp_path / "a1"))])
    assert Layout.from_dict(mixed.layout).audio == AudioFrameMajor(1)
    assert ShardDataModule([SourceSpec(str(tmp_path / "t"))]).layout["audio"] is None
    with pytest.raises(ShardError, match="different audio layouts") as err:
        ShardDataModule([SourceSpec(str(tmp_path / "a1"))], [SourceSpec(str(tmp_path / "a4"))])
    assert "a1" in str(err.value) and "a4" in str(err.value)


def test_sampler_ranks_cover_the_global_batch_and_resume():
    one = list(ResumableBatchSampler(8, 0, 1, epoch_batches=5))
    r0 = list(ResumableBatchSampler(4, 0, 2, epoch_batches=5))
    r1 = list(ResumableBatchSampler(4, 1, 2, epoch_batches=5))
    for g, a, b in zip(one, r0, r1, strict=True):
        assert sorted(a + b) == g
    resumed = ResumableBatchSampler(8, 0, 1, epoch_batches=5, start_batch=7)
    resumed.set_epoch(1)
    assert list(resumed) == [list(range(g * 8, g * 8 + 8)) for g in (7, 8, 9)]


# ---- loss --------------------------------------------------------------------------------
def _module(vocab: Vocab, **kw) -> LanguageModule:
    arch = ModelConfig(n_layer=1, n_embd=32, n_head=2, block_size=16)
    m = LanguageModule(arch=arch, vocab_manifest=vocab.to_manifest({"text": "abc"}), **kw)
    m.configure_model()
    m.log = m.log_dict = lambda *a, **k: None  # no trainer attached
    return m


def test_loss_weights_zloss_and_nonfinite():
    vocab = Vocab(text_size=40, image_codes=8)
    torch.manual_seed(0)
    x = torch.randint(16, vocab.size, (2, 16))
    batch = {"input": x, "target": x.roll(-1, 1), "mask": torch.ones(2, 16, dtype=torch.bool)}
    base = _module(vocab)
    loss = base.compute_loss(batch, "train")
    # reference: plain cross-entropy over the unpadded vocabulary positions
    logits = base.model(x).float()
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["target"].flatten())
    assert torch.allclose(loss, ref, atol=1e-5)
    torch.manual_seed(1)
    zl = _module(vocab, z_loss=1e-2)
    zl.model.load_state_dict(base.model.state_dict())
    assert zl.compute_loss(batch, "train") > loss
    w = _module(vocab, modality_weights={"image": 0.0})
    w.model.load_state_dict(base.model.state_dict())
    is_img = torch.from_numpy(vocab.modality_of(batch["target"].numpy()) == 2)
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["target"].flatten(), reduction="none"
    )
    expect = (ce * (~is_img.flatten())).sum() / ce.numel()
    assert torch.allclose(w.compute_loss(batch, "train"), expect, atol=1e-5)
    with torch.no_grad():
        base.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        base.compute_loss(batch, "train")


@pytest.mark.parametrize("arch", [{}, {"tie_embeddings": True}])
def test_compute_loss_fused_equals_the_logits_path(arch):
    """compute_loss with the fused head loss == plain autograd over materialised logits:
    loss, every gradient and every per-modality metric (z-loss, weights, mask); no-grad too."""
    vocab = Vocab(text_size=40, image_codes=8, audio_codes=8, audio_levels=2)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, block_size=16, **arch)
    m = LanguageModule(arch=cfg, vocab_manifest=vocab.to_manifest({"text": "abc"}),
                       z_loss=1e-2, modality_weights={"image": 0.5})  # fmt: skip
    m.configure_model()
    logged: dict = {}
    m.log = lambda k, val, **kw: logged.__setitem__(k, val)
    m.log_dict = lambda d, **kw: logged.update(d)
    x = torch.randint(0, vocab.size, (3, 16))
    target, mask = x.roll(-1, 1), torch.rand(3, 16) > 0.3
    loss = m.compute_loss({"input": x, "target": target, "mask": mask}, "train")
    loss.backward()
    grads = [p.grad.clone() for p in m.model.parameters()]
    # reference: the full (B, T, V) logits, autograd through logsumexp and gather
    m.model.zero_grad()
    logits, maskf = m.model(x), mask.float()
    mod = m.modality_table[target]
    lse = torch.logsumexp(logits, -1)
    ce = lse - logits.gather(-1, target[..., None]).squeeze(-1)
    w = m.modality_weight[mod] * maskf
    ref = ((ce * w).sum() + 1e-2 * (lse.square() * maskf).sum()) / maskf.sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for g, p in zip(grads, m.model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    correct = (logits.argmax(-1) == target).float()
    assert {"train/loss_text", "train/acc_image", "train/loss_audio"} <= set(logged)
    for i, name in enumerate(("special", "text", "image", "audio")):
        sel = maskf * (mod == i).float()
        if sel.sum() > 0:
            torch.testing.assert_close(logged[f"train/loss_{name}"], (ce * sel).sum() / sel.sum())
            torch.testing.assert_close(logged[f"train/acc_{name}"],
                                       (correct * sel).sum() / sel.sum())  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(m.compute_loss({"input": x, "target": target, "mask": mask},
                                                  "val"), loss)  # fmt: skip
    if m.model.lm_head is not None:  # a hook on the output layer takes the logits path
        m.model.lm_head.register_forward_hook(lambda mod, args, out: out * 0)
        plain = m.compute_loss({"input": x, "target": target, "mask": mask}, "train")
        lv = math.log(m.config.padded_vocab_size)  # zero logits: ce = lse = log V
        expect = (lv * w.sum() + 1e-2 * lv**2 * maskf.sum()) / maskf.sum()
        assert plain.item() == pytest.approx(expect.item(), rel=1e-5)


def test_cosine_schedule():
    lrs = [cosine_schedule(s, 10, 100, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


# ---- end to end --------------------------------------------------------------------------
def _fit(args: list[str]) -> None:
    make_cli(args)


def test_exact_resume_after_kill(shards, tmp_path):
    """Kill a run (SIGKILL) after a checkpoint, resume it: later losses equal a clean run's."""
    n = 10
    _fit(fit_args(shards, tmp_path / "clean", n))
    clean = step_losses(tmp_path / "clean")
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "native_mm.cli", *fit_args(shards, killed, 1000)]
    cmd += ["--trainer.callbacks+=tests.slowdown.SlowDown", "--trainer.callbacks.seconds=0.5"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    ckpt = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["global_step"] >= 3:
            break
        time.sleep(0.2)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert alive, f"run ended before it could be killed:\n{err[-3000:]}"
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 3 <= step < n
    _fit(fit_args(shards, tmp_path / "resumed", n, "--ckpt_path", str(ckpt)))
    resumed = step_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(step, n))
    for s in resumed:
        assert resumed[s] == pytest.approx(clean[s], abs=1e-6), s


def test_resumed_fit_keeps_the_earlier_runs_csv_log(shards, tmp_path):
    """Lightning's CSV logger deletes metrics.csv at start: a resume moves it aside first."""
    out = tmp_path / "run"
    _fit(fit_args(shards, out, 2))
    _fit(fit_args(shards, out, 4, "--ckpt_path", str(out / "checkpoints" / "last.ckpt")))
    first = step_losses(out, log="metrics.1.csv")
    assert sorted(first) == [0, 1] and sorted(step_losses(out)) == [2, 3]


def test_ddp_two_processes_match_one(shards, tmp_path):
    """Two gloo processes with the global batch split give one process's losses."""
    _fit(fit_args(shards, tmp_path / "one", 4))
    cmd = [sys.executable, "-m", "native_mm.cli", *fit_args(shards, tmp_path / "ddp", 4)]
    cmd += ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "ddp")
    assert sorted(two) == sorted(one) == [0, 1, 2, 3]
    for s in one:
        assert two[s] == pytest.approx(one[s], abs=1e-4), (s, one, two)
    a = load_checkpoint(tmp_path / "one/checkpoints/last.ckpt").model
    b = load_checkpoint(tmp_path / "ddp/checkpoints/last.ckpt").model
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-4), k


def test_bf16_mixed_trains(shards, tmp_path):
    _fit(fit_args(shards, tmp_path / "bf16", 24, "--trainer.precision", "bf16-mixed"))
    losses = step_losses(tmp_path / "bf16")
    first, last = np.mean([losses[s] for s in range(3)]), np.mean([losses[s] for s in (21, 22, 23)])
    assert last < first - 0.3, losses


def test_checkpoint_with_other_tokenizer_set_is_an_error(shards, tmp_path):
    _fit(fit_args(shards, tmp_path / "a", 2))
    ckpt = tmp_path / "a/checkpoints/last.ckpt"
    lm = load_checkpoint(ckpt, ShardSet(shards).manifest["vocab"])
    assert lm.vocab.size == lm.model.config.vocab_size
    other = Vocab(text_size=100).to_manifest({"text": "f" * 64})
    with pytest.raises(CheckpointError, match="text tokenizer fingerprint mismatch"):
        load_checkpoint(ckpt, other)
    # resuming fit on data from another tokenizer set fails naming both fingerprints
    vocab = Vocab(text_size=100)
    write_shards_from_ids(
        tmp_path / "other", random_docs(vocab, 20), vocab, fingerprints={"text": "f" * 64}
    )
    with pytest.raises(VocabError, match="ffffffffffff"):
        _fit(fit_args(tmp_path / "other", tmp_path / "b", 4, "--ckpt_path", str(ckpt)))


def test_resume_refuses_a_checkpoint_of_the_old_weight_layout(shards, tmp_path):
    """(in, out) weights with an optimizer state of that shape cannot resume: a clear error,
    not a shape mismatch deep in the optimizer; inference loads such files (transposed)."""
    _fit(fit_args(shards, tmp_path / "a", 2))
    ckpt = tmp_path / "a/checkpoints/last.ckpt"
    old = torch.load(ckpt, weights_only=True)
    del old["weight_layout"]
    old["state_dict"] = {k: v.t() if k.endswith(".weight") and v.dim() == 2 and "wte" not in k
                         else v for k, v in old["state_dict"].items()}  # fmt: skip
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="cannot resume here"):
        _fit(fit_args(shards, tmp_path / "b", 4, "--ckpt_path", str(tmp_path / "old.ckpt")))
    lm, new = load_checkpoint(tmp_path / "old.ckpt"), load_checkpoint(ckpt)
    for k, v in new.model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k


def test_fit_on_interleaved_shards_logs_per_modality_and_throughput(mm_shards, tmp_path):
    out = tmp_path / "mm"
    _fit(fit_args(mm_shards, out, 3, "--data.dropout.image_dropout", "0.2",
                  "--data.dropout.cond_dropout", "0.2", "--model.z_loss", "1e-4",
                  "--data.dropout.audio_prompt_noise", "0.2"))  # fmt: skip
    for key in ("train/loss_text", "train/loss_image", "train/acc_audio", "perf/tokens_per_s",
                "perf/mfu"):  # fmt: skip
        assert step_losses(out, key), key
    assert list(out.glob("**/config.yaml"))  # the resolved config is saved with the run
