"""Generation: cache == no cache, well-formed spans from a random model, CFG, sampling filters,
the constraint state machine against a loop reference, prompts, checkpoints and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from native_mm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from native_mm.constraints import DONE, DecodeConstraint, GenerationError, OutputSpec
from native_mm.generate_cli import main, save_outputs
from native_mm.generation import (
    PromptError,
    SamplingConfig,
    encode_prompt,
    generate,
    generate_ids,
    sample_next,
    stream,
)
from native_mm.layouts import AudioFrameMajor, Layout
from native_mm.model import ModelConfig, Transformer
from native_mm.sampling import filter_logits
from native_mm.sequence import SequenceCodec
from native_mm.tokenizers.base import TokenizerSet, Waveform
from native_mm.vocab import BOA, BOI, BOS, EOA, EOI, EOS, PAD, Vocab

VOCAB = Vocab(text_size=100, image_codes=32, audio_codes=16, audio_levels=3, image_max_grid=8)
PROMPTS = [[BOS, 20, 21, 22, 23, 24], [BOS, 30], [BOS, 40, 41, 42]]  # different lengths


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(vocab_size: int, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_name("tiny", vocab_size=vocab_size, **overrides)).eval()


@pytest.fixture(scope="module")
def model() -> Transformer:
    return _model(VOCAB.size)


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizers) -> TokenizerSet:
    return tiny_tokenizers


@pytest.fixture(scope="module")
def mm_model(tokenizers) -> Transformer:
    return _model(tokenizers.vocab.size, seed=1)


# ---- sampling filters -----------------------------------------------------------------------
def _reference_filter(row: list[float], top_k: int | None, top_p: float | None) -> set[int]:
    """Ids kept by top-k then top-p, one row, with plain Python loops."""
    order = sorted(range(len(row)), key=lambda i: -row[i])
    keep = [i for i in order if row[i] != float("-inf")]
    if top_k is not None:
        keep = [i for i in keep if row[i] >= row[order[top_k - 1]]]
    if top_p is not None:
        z = sum(np.exp(row[i]) for i in keep)
        out, acc = [], 0.0
        for i in keep:
            if acc >= top_p:
                break
            out.append(i)
            acc += np.exp(row[i]) / z
        keep = out
    return set(keep)


@pytest.mark.parametrize(("top_k", "top_p"), [(1, None), (5, None), (None, 0.5), (None, 0.9),
                                              (7, 0.6), (None, 1.0), (40, None)])  # fmt: skip
def test_filter_logits_matches_loop_reference(top_k, top_p) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=g, dtype=torch.float64) * 2
    logits[0, :10] = float("-inf")  # masked ids stay out
    out = filter_logits(logits, top_k, top_p)
    for b in range(6):
        kept = set(torch.nonzero(out[b] > float("-inf")).flatten().tolist())
        assert kept == _reference_filter(logits[b].tolist(), top_k, top_p)
        assert int(logits[b].argmax()) in kept


def test_sample_frequencies_follow_the_filtered_softmax() -> None:
    """20000 draws at temperature 0.7 with top-k 4: frequencies match softmax(l / 0.7)
    renormalised over the 4 best ids (5 sigma), and nothing outside them is drawn."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, float("-inf"), 3.0])
    cfg = SamplingConfig(temperature=0.7, top_k=4)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(20000, -1), cfg, g)
    freq = torch.bincount(draws, minlength=8).double() / 20000
    keep = torch.tensor([0, 1, 2, 7])
    want = torch.zeros(8, dtype=torch.float64)
    want[keep] = (logits[keep].double() / 0.7).softmax(-1)
    sigma = (want * (1 - want) / 20000).sqrt()
    assert torch.all((freq - want).abs() <= 5 * sigma + 1e-12), (freq, want)


def test_sampling_is_seeded_and_greedy_is_argmax(model) -> None:
    run = lambda seed: generate_ids(model, PROMPTS, VOCAB, sampling=SamplingConfig(  # noqa: E731
        max_new_tokens=20, seed=seed))  # fmt: skip
    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.ids, y.ids) for x, y in zip(a, c, strict=True))
    greedy = generate_ids(model, PROMPTS, VOCAB, sampling=SamplingConfig(20, temperature=0))
    topk1 = generate_ids(model, PROMPTS, VOCAB, sampling=SamplingConfig(20, top_k=1, seed=5))
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(greedy, topk1, strict=True))


# ---- the constraint state machine -------------------------------------------------------------
def _reference_allowed(
    history: list[int], spec: OutputSpec, budget: int, n_prompt: int = 1
) -> set[int]:
    """The allowed next ids after ``history`` (its first ``n_prompt`` ids are the prompt),
    by parsing it from the start with loops."""
    v, q = VOCAB, VOCAB.audio_levels
    g0, ng = v.ranges["image_grid"].start, v.ranges["image_grid"].size
    state, count, h, target, texts = "text", 0, 0, 0, 0
    text = set(range(v.ranges["text"].start, v.ranges["text"].stop))
    for i, t in enumerate(history):
        if state == "text":
            state = {BOI: "h", BOA: "audio", EOS: "done"}.get(t, "text")
            count = 0
            texts += i >= n_prompt and t in text
        elif state == "h":
            h, state = t - g0 + 1, "w"
        elif state == "w":
            target, count, state = h * (t - g0 + 1), 0, "img"
        elif state in ("img", "audio"):
            if t in (EOI, EOA):
                state = "text"
            else:
                count += 1
    grids = range(1, ng + 1)
    max_grid = min(spec.max_image_grid or ng, ng)
    if state == "done":
        return {PAD}
    if state == "text":
        allowed = text | ({EOS} if spec.modality != "text" or texts else set())
        hw = spec.image_size[0] * spec.image_size[1] if spec.image_size else 1
        if spec.modality in (None, "image") and budget >= hw + 4:
            allowed.add(BOI)
        if spec.modality in (None, "audio") and budget >= (spec.audio_frames or 1) * q + 2:
            allowed.add(BOA)
        return allowed
    if state in ("h", "w"):
        if spec.image_size:
            return {g0 + spec.image_size[state == "w"] - 1}
        if state == "h":
            return {g0 + g - 1 for g in grids if g <= max_grid and g <= budget - 3}
        return {g0 + g - 1 for g in grids if g <= max_grid and h * g <= budget - 2}
    if state == "img":
        img = v.ranges["image"]
        return {EOI} if count == target else set(range(img.start, img.stop))
    level = count % q
    codes = set(range(v.audio_range(level).start, v.audio_range(level).stop))
    if level:
        return codes
    if spec.audio_frames:
        return {EOA} if count == spec.audio_frames * q else codes
    if budget < q + 1:
        return {EOA}
    return codes | ({EOA} if count else set())


@pytest.mark.parametrize(
    "spec",
    [OutputSpec(), OutputSpec(max_image_grid=3), OutputSpec("image", image_size=(2, 3)),
     OutputSpec("audio", audio_frames=2), OutputSpec("text"), OutputSpec("image")],
)  # fmt: skip
def test_constraint_mask_matches_loop_reference(spec: OutputSpec) -> None:
    """Random walks through the vectorised machine agree with the parser at every step."""
    rng = np.random.default_rng(0)
    b, steps = 8, 40
    con = DecodeConstraint(SequenceCodec(VOCAB), b, 256, spec)
    histories = [[BOS] for _ in range(b)]
    con.state_after([torch.tensor(h) for h in histories])
    for step in range(steps):
        budget = steps - step
        mask = con.allowed(budget)
        assert not mask[:, VOCAB.size :].any()  # padded vocabulary never allowed
        for r in range(b):
            got = set(torch.nonzero(mask[r]).flatten().tolist())
            assert got == _reference_allowed(histories[r], spec, budget), (r, histories[r])
        # Bias the walk towards span openers/closers so spans actually happen.
        toks = []
        for r in range(b):
            allowed = torch.nonzero(mask[r]).flatten().numpy()
            special = [t for t in allowed if t in (BOI, BOA, EOA)]
            pick = special if special and rng.random() < 0.3 else allowed
            toks.append(int(rng.choice(pick)))
        con.advance(torch.tensor(toks))
        for r in range(b):
            histories[r].append(toks[r])
    assert (con.state == DONE).any() or con.closed.sum() > 0


# ---- cache == no cache -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "out",
    [OutputSpec(None, max_image_grid=4, stop_tokens=()), OutputSpec("image", image_size=(3, 4)),
     OutputSpec("audio", audio_frames=6), OutputSpec("image", max_image_grid=4),
     OutputSpec("text", stop_tokens=tuple(range(80, 90)))],  # rows stop at different steps
)  # fmt: skip
def test_greedy_with_cache_equals_without(model, out) -> None:
    args = dict(max_new_tokens=40, temperature=0)
    cached = generate_ids(model, PROMPTS, VOCAB, out, SamplingConfig(**args))
    full = generate_ids(model, PROMPTS, VOCAB, out, SamplingConfig(**args, use_cache=False))
    assert sum(len(a.ids) for a in cached) > 20
    for a, b in zip(cached, full, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
    # Each row of the left-padded batch equals the row generated alone.
    for prompt, a in zip(PROMPTS, cached, strict=True):
        alone = generate_ids(model, [prompt], VOCAB, out, SamplingConfig(**args))[0]
        np.testing.assert_array_equal(alone.ids, a.ids)


# ---- well-formed samples from a random model -------------------------------------------------
@pytest.mark.parametrize(
    "output",
    [OutputSpec("text"), OutputSpec("image", max_image_grid=4),
     OutputSpec("image", image_size=(2, 3)), OutputSpec("audio"),
     OutputSpec("audio", audio_frames=3), OutputSpec(None, max_image_grid=3)],
)  # fmt: skip
def test_hundred_random_samples_are_well_formed(mm_model, tokenizers, tmp_path, output) -> None:
    """100 seeded samples per modality: every span parses strictly and decodes to media."""
    img = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), np.uint8)).save(img)
    prompt = [("text", "one two"), ("image", str(img)), ("text", "three")]
    codec = SequenceCodec(tokenizers.vocab)
    gens = generate(mm_model, prompt, tokenizers, output,
                    SamplingConfig(max_new_tokens=48, seed=7), num_samples=100)  # fmt: skip
    assert len(gens) == 100
    f, hop = tokenizers.image.factor, tokenizers.audio.config.hop_length
    kinds = set()
    for g in gens:
        # Re-parse all generated ids strictly: no malformed or dropped span.
        assert codec.decode(g.ids, strict=True) == g.spans
        if output.modality in ("image", "audio"):
            assert g.finish_reason == "span_closed" and len(g.spans) == 1
            assert g.spans[0].kind == output.modality
        if output.modality == "text":
            assert all(s.kind == "text" for s in g.spans)
        for span, media in zip(g.spans, g.outputs, strict=True):
            kinds.add(span.kind)
            if span.kind == "image":
                h, w = span.codes.shape
                assert max(h, w) <= (output.max_image_grid or 64)
                if output.image_size:
                    assert (h, w) == output.image_size
                assert isinstance(media, Image.Image) and media.size == (w * f, h * f)
            elif span.kind == "audio":
                q, t = span.codes.shape
                assert q == 3 and t >= 1
                if output.audio_frames:
                    assert t == output.audio_frames
                assert isinstance(media, Waveform) and media.samples.shape[-1] == t * hop
                assert np.isfinite(media.samples).all()
            else:
                assert isinstance(media, str)
    if output.modality is None:
        assert {"text", "image", "audio"} <= kinds  # the model chose every modality


def test_stream_yields_the_segments_of_generate(mm_model, tokenizers, tmp_path) -> None:
    out, samp = OutputSpec(None, max_image_grid=3), SamplingConfig(max_new_tokens=40, seed=3)
    gens = generate(mm_model, [("text", "one")], tokenizers, out, samp, num_samples=4)
    paths = save_outputs(gens, tmp_path)
    ext = {"text": ".txt", "image": ".png", "audio": ".wav"}
    assert [p.suffix for p in paths] == [ext[s.kind] for g in gens for s in g.spans]
    assert all(p.stat().st_size > 0 for p in paths)
    streamed: list[list] = [[] for _ in range(4)]
    for r, media in stream(mm_model, [("text", "one")], tokenizers, out, samp, num_samples=4):
        streamed[r].append(media)
    for g, s in zip(gens, streamed, strict=True):
        assert len(g.outputs) == len(s)
        for a, b in zip(g.outputs, s, strict=True):
            if isinstance(a, str):
                assert a == b
            elif isinstance(a, Image.Image):
                assert np.array_equal(np.asarray(a), np.asarray(b))
            else:
                assert np.array_equal(a.samples, b.samples)


def test_forced_text_never_answers_with_an_empty_text() -> None:
    """With a forced text output ``<eos>`` is refused until one text piece is out (a model
    that would stop at once after an image/audio prompt still answers)."""
    t0 = VOCAB.ranges["text"].start
    prompt = [torch.tensor([BOS, t0 + 3, BOA, EOA])]  # the prompt's own text does not count
    for spec, first_eos in ((OutputSpec("text"), False), (OutputSpec(None), True)):
        con = DecodeConstraint(SequenceCodec(VOCAB), 1, 256, spec)
        con.state_after(prompt)
        assert bool(con.allowed(10)[0, EOS]) is first_eos
        con.advance(torch.tensor([t0 + 5]))
        assert bool(con.allowed(9)[0, EOS])


def test_stop_tokens_and_length(model) -> None:
    t = VOCAB.ranges["text"].start
    stop = tuple(range(t, t + 50))  # half the text ids: every row stops early
    gens = generate_ids(model, PROMPTS, VOCAB, OutputSpec("text", stop_tokens=stop),
                        SamplingConfig(max_new_tokens=200, seed=0))  # fmt: skip
    for g in gens:
        assert g.finish_reason == "stop_token" and int(g.ids[-1]) in stop
        assert not np.isin(g.ids[:-1], stop).any()
    gens = generate_ids(model, PROMPTS, VOCAB, OutputSpec("text", stop_tokens=()),
                        SamplingConfig(max_new_tokens=13, seed=0))  # fmt: skip
    assert all(len(g.ids) == 13 and g.finish_reason == "length" for g in gens)


# ---- classifier-free guidance ----------------------------------------------------------------
@pytest.mark.parametrize("output", [OutputSpec("image", max_image_grid=4),
                                    OutputSpec("audio", audio_frames=4)])  # fmt: skip
def test_cfg_scale_one_equals_conditional_sampling(model, output) -> None:
    prompts = PROMPTS * 4
    plain = generate_ids(model, prompts, VOCAB, output, SamplingConfig(40, seed=11))
    cfg1 = generate_ids(model, prompts, VOCAB, output, SamplingConfig(40, seed=11, cfg_scale=1))
    cfg3 = generate_ids(model, prompts, VOCAB, output, SamplingConfig(40, seed=11, cfg_scale=10))
    for a, b in zip(plain, cfg1, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
    changed = sum(not np.array_equal(a.ids, c.ids) for a, c in zip(plain, cfg3, strict=True))
    assert changed >= len(prompts) // 2
    for c in cfg3:  # guided samples are still well formed
        assert c.finish_reason == "span_closed"
        assert SequenceCodec(VOCAB).decode(c.ids, strict=True) == c.spans


def test_guided_batch_rows_equal_rows_alone(model) -> None:
    """With guidance, rows finishing at different steps leave the batch (cond and uncond
    streams together) without changing the other rows."""
    out = OutputSpec("image", max_image_grid=4)
    samp = SamplingConfig(40, temperature=0, cfg_scale=2.0)
    batch = generate_ids(model, PROMPTS, VOCAB, out, samp)
    assert len({len(g.ids) for g in batch}) > 1
    for prompt, g in zip(PROMPTS, batch, strict=True):
        np.testing.assert_array_equal(generate_ids(model, [prompt], VOCAB, out, samp)[0].ids, g.ids)


def test_cfg_needs_a_media_output(model) -> None:
    with pytest.raises(GenerationError, match="forced image or audio"):
        generate_ids(model, PROMPTS, VOCAB, OutputSpec(), SamplingConfig(cfg_scale=2.0))


# ---- bad prompts and options -----------------------------------------------------------------
def test_bad_prompts_give_clear_errors(model, mm_model, tokenizers, tmp_path) -> None:
    with pytest.raises(PromptError, match=r"segment 1 \(image .*nope.png\): no such file"):
        encode_prompt([("text", "hi"), ("image", str(tmp_path / "nope.png"))], tokenizers)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(PromptError, match=r"segment 0 \(image .*notes.png\)"):
        encode_prompt([("image", str(bad))], tokenizers)
    wav = tmp_path / "clip.xyz"
    wav.write_bytes(b"\0" * 64)
    with pytest.raises(PromptError, match=r"segment 0 \(audio .*clip.xyz\)"):
        encode_prompt([{"audio": str(wav)}], tokenizers)
    with pytest.raises(PromptError, match="unknown kind 'video'"):
        encode_prompt([("video", "x.mp4")], tokenizers)
    long_text = " ".join(["one two three"] * 200)
    with pytest.raises(PromptError, match="block_size=256"):
        generate(mm_model, [("text", long_text)], tokenizers)
    with pytest.raises(PromptError, match="outside the vocabulary"):
        generate_ids(model, [[BOS, VOCAB.size + 3]], VOCAB)
    with pytest.raises(GenerationError, match="needs 19 more tokens"):
        generate_ids(model, PROMPTS, VOCAB, OutputSpec("image", image_size=(4, 4)),
                     SamplingConfig(max_new_tokens=10))  # fmt: skip
    with pytest.raises(GenerationError, match="output modality"):
        OutputSpec("video")
    text_only = Vocab(text_size=50)
    with pytest.raises(GenerationError, match="no image range"):
        generate_ids(_model(text_only.size), [[BOS]], text_only, OutputSpec("image"))
    with pytest.raises(GenerationError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(GenerationError, match="wrong tokenizer set"):
        generate(model, [("text", "hi")], tokenizers)


# ---- checkpoints and the CLI -----------------------------------------------------------------
def test_checkpoint_roundtrip_and_tokenizer_mismatch(mm_model, tokenizers, tmp_path) -> None:
    from native_mm.tokenizers.image import ImageConfig, ImageTokenizer

    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, mm_model, tokenizers.manifest())
    lm = load_checkpoint(ckpt, tokenizers)
    assert lm.vocab == tokenizers.vocab and lm.layout == Layout.for_vocab(lm.vocab)
    idx = torch.randint(0, lm.vocab.size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(idx), mm_model(idx))
    torch.manual_seed(123)  # same shapes, other weights -> other fingerprint
    other_image = ImageTokenizer(tokenizers.image.config)
    assert isinstance(other_image.config, ImageConfig)
    other = TokenizerSet(tokenizers.text, other_image, tokenizers.audio, image_max_grid=16)
    with pytest.raises(ValueError, match="image tokenizer fingerprint mismatch"):
        load_checkpoint(ckpt, other)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(CheckpointError, match="not a native-mm checkpoint"):
        load_checkpoint(junk)


def test_checkpoint_carries_the_layout_and_refuses_impossible_ones(
    mm_model, tokenizers, tmp_path
) -> None:
    """The layout saved with the model comes back; generation then follows it unasked."""
    ckpt = tmp_path / "model.pt"
    one = Layout(audio=AudioFrameMajor(1))
    save_checkpoint(ckpt, mm_model, tokenizers.manifest(), one)
    lm = load_checkpoint(ckpt, tokenizers)
    assert lm.layout.audio == AudioFrameMajor(1) and lm.codec.audio_levels == 1
    (g,) = generate(lm.model, [("text", "one")], tokenizers, OutputSpec("audio", audio_frames=3),
                    SamplingConfig(max_new_tokens=8, seed=0), layout=lm.layout)  # fmt: skip
    assert g.spans[0].codes.shape == (1, 3)
    too_many = Layout(audio=AudioFrameMajor(tokenizers.vocab.audio_levels + 1))
    save_checkpoint(ckpt, mm_model, tokenizers.manifest(), too_many)
    with pytest.raises(CheckpointError, match=r"model\.pt: audio_levels=\d+ but the vocab"):
        load_checkpoint(ckpt, tokenizers)
    torch.save({**torch.load(ckpt, weights_only=True), "layout": {"audio": {"name": "zigzag"}}},
               ckpt)  # fmt: skip
    (ckpt.parent / "model.pt.sha256.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no audio layout named 'zigzag'"):
        load_checkpoint(ckpt, tokenizers)


def test_cli_generates_png_wav_and_text(mm_model, tokenizers, tmp_path, capsys) -> None:
    tok_dir, ckpt, out = tmp_path / "tok", tmp_path / "model.pt", tmp_path / "out"
    tokenizers.save(tok_dir)
    save_checkpoint(ckpt, mm_model, tokenizers.manifest())
    base = ["--ckpt", str(ckpt), "--tokenizers", str(tok_dir), "--text", "one two"]
    assert main([*base, "--output-modality", "image", "--image-size", "3x2", "--cfg-scale",
                 "2", "--out", str(out / "img")]) == 0  # fmt: skip
    png = Image.open(out / "img" / "sample0_0.png")
    assert png.size == (2 * 4, 3 * 4)
    assert main([*base, "--output-modality", "audio", "--audio-seconds", "0.01",
                 "--out", str(out / "aud")]) == 0  # fmt: skip
    import soundfile

    samples, rate = soundfile.read(out / "aud" / "sample0_0.wav")
    assert rate == 8000 and len(samples) == 5 * 16  # 0.01 s at 500 frames/s, hop 16
    assert main([*base, "--output-modality", "text", "--max-new-tokens", "8",
                 "--out", str(out / "txt")]) == 0  # fmt: skip
    assert (out / "txt" / "sample0_0.txt").read_text()
    assert "sample0_0.txt" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["nn.Linear", None])
def test_loads_the_training_checkpoint_layout(mm_model, tokenizers, tmp_path, layout) -> None:
    """LanguageModule.on_save_checkpoint: top-level model_config / vocab_manifest and a
    Lightning state_dict whose keys carry the ``model.`` attribute prefix. A file from
    before ``weight_layout`` (Linear weights stored (in, out)) loads transposed."""
    from native_mm.checkpoint import WEIGHT_LAYOUT

    ckpt = tmp_path / "last.ckpt"
    state = mm_model.state_dict()
    if layout is None:  # the old layout: every Linear weight (in, out)
        linear = {n + ".weight" for n, m in mm_model.named_modules() if isinstance(m, nn.Linear)}
        assert len(linear) == 4 * mm_model.config.n_layer + 1
        state = {k: v.t().contiguous() if k in linear else v for k, v in state.items()}
    torch.save(
        {
            "epoch": 0,
            "global_step": 3,
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "model_config": mm_model.config.to_dict(),
            "vocab_manifest": tokenizers.manifest(),
            "hyper_parameters": {"arch": mm_model.config.to_dict(), "lr": 1e-3},
            **({"weight_layout": WEIGHT_LAYOUT} if layout else {}),
        },
        ckpt,
    )
    loaded = load_checkpoint(ckpt, tokenizers).model
    for name, tensor in mm_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_generates_from_a_real_training_checkpoint(tmp_path) -> None:
    """Two `native-mm fit` steps on interleaved shards (test doubles for the media), then
    the Lightning checkpoint drives CFG image generation through load_checkpoint."""
    from native_mm.training.cli import make_cli
    from tests.doubles import corpus_shards, fit_args, tokenizer_set

    shards = corpus_shards(tmp_path / "data", n_docs=12)
    make_cli(fit_args(shards, tmp_path / "run", 2))
    tokenizers = tokenizer_set()
    lm = load_checkpoint(tmp_path / "run/checkpoints/last.ckpt", tokenizers)
    model = lm.model
    assert lm.vocab == tokenizers.vocab and model.config.block_size == 32
    output = OutputSpec("image", image_size=(2, 3))
    sampling = SamplingConfig(max_new_tokens=16, seed=0, cfg_scale=3.0)
    gens = generate(model, [("text", "a cat")], tokenizers, output, sampling, num_samples=3)
    assert [np.asarray(g.outputs[0]).shape for g in gens] == [(2, 3)] * 3
