"""Audio tokenizer (EnCodec): shapes, ranges, bandwidth, IO edge cases, save/load, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from native_mm.apps.digits import speech
from native_mm.tokenizers.audio import AudioConfig, AudioTokenizer
from native_mm.tokenizers.base import MediaError, Waveform

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "recipes" / "data" / "spoken_digits"
TINY = dict(
    sample_rate=8000,
    n_filters=4,
    ratios=[8, 5, 4],
    dimension=16,
    lstm=0,
    causal=False,
    n_q=3,
    codebook_size=16,
    kmeans_iters=2,
)
HOP = 160


def speech_clips(n: int = 6) -> list[np.ndarray]:
    grid = {f"{a}+{v}" for a in speech.ACCENTS for v in speech.VARIANTS}  # the first 480
    files = sorted(f for f in (DIGITS / "train").glob("*.flac") if f.stem[:-2] in grid)
    files = files[:: 480 // n][:n]
    return [sf.read(f, dtype="float32")[0] for f in files]


def make_tiny(**overrides) -> AudioTokenizer:
    """Tiny tokenizer whose codebooks were k-means initialised on real speech."""
    torch.manual_seed(0)
    tok = AudioTokenizer(AudioConfig(**(TINY | overrides)))
    x = torch.from_numpy(np.concatenate(speech_clips()))[None, None]
    x = x.expand(1, tok.config.channels, -1)
    tok.model.train()
    with torch.no_grad():
        tok.model.quantizer.vq(tok.model.encoder(x))  # first batch -> k-means init
    tok.model.eval()
    return tok


@pytest.fixture(scope="module")
def tiny() -> AudioTokenizer:
    return make_tiny()


def test_round_trip_shapes_and_ranges(tiny):
    x = speech_clips(1)[0]
    codes = tiny.encode(Waveform(x[None], 8000))
    assert codes.dtype == np.int64
    assert codes.shape == (3, math.ceil(len(x) / HOP))
    assert codes.min() >= 0 and codes.max() < 16
    assert len(np.unique(codes[0])) > 1  # not a constant code
    wav = tiny.decode(codes)
    assert wav.sample_rate == 8000 and wav.samples.dtype == np.float32
    assert wav.samples.shape == (1, codes.shape[1] * HOP)
    assert np.isfinite(wav.samples).all() and np.abs(wav.samples).max() <= 1
    np.testing.assert_array_equal(tiny.encode(Waveform(x[None], 8000)), codes)  # deterministic
    with pytest.raises(MediaError):
        tiny.decode(np.full((3, 4), 16))
    with pytest.raises(MediaError):
        tiny.decode(np.zeros((4, 4), dtype=np.int64))  # more levels than the model has


def test_bandwidth_levels(tiny):
    x = Waveform(speech_clips(1)[0][None], 8000)
    full = tiny.encode(x)
    tok1 = AudioTokenizer(AudioConfig(**(TINY | {"levels": 1})))
    tok1.model.load_state_dict(tiny.model.state_dict())
    tok1.model.eval()
    assert tok1.n_levels == 1 and tiny.n_levels == 3
    one = tok1.encode(x)
    assert one.shape == (1, full.shape[1])
    np.testing.assert_array_equal(one[0], full[0])  # residual VQ: level 0 does not depend on Q
    assert tok1.decode(one).samples.shape == tiny.decode(full).samples.shape
    assert tok1.fingerprint() != tiny.fingerprint()  # the bandwidth changes the codes
    with pytest.raises(ValueError, match="levels"):
        AudioConfig(**(TINY | {"levels": 4}))


def test_loss_decreases_on_real_speech():
    from native_mm.tokenizers.audio_metrics import mel_loss
    from native_mm.tokenizers.audio_train import AudioTrainSpec, make_module

    torch.manual_seed(0)
    spec = AudioTrainSpec(model=AudioConfig(**TINY))
    module = make_module(spec)
    seg = 3200
    batch = torch.stack(
        [torch.from_numpy(np.pad(c, (0, max(0, seg - len(c))))[:seg]) for c in speech_clips(8)]
    )[:, None]
    opt = torch.optim.Adam(module.generator.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        y, _, commit = module.reconstruct(batch)
        loss = mel_loss(module.mel, batch, y) + 0.1 * (y - batch).abs().mean() + commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_save_load_fingerprint(tiny, tmp_path):
    tiny.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["modality"] == "audio" and meta["fingerprint"] == tiny.fingerprint()
    back = AudioTokenizer.load(tmp_path / "tok")
    assert back.fingerprint() == tiny.fingerprint()
    x = Waveform(speech_clips(1)[0][None], 8000)
    np.testing.assert_array_equal(back.encode(x), tiny.encode(x))
    w = tmp_path / "tok" / "weights.pt"
    w.write_bytes(w.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        AudioTokenizer.load(tmp_path / "tok")


def encodec_24khz_file(directory: Path):
    """encodec's 24 kHz model (random weights, seed 0) and its state dict written under
    the published name ``encodec_24khz-CHECKSUM.th`` -> (model, file)."""
    from encodec import EncodecModel

    from native_mm.io import sha256_file

    torch.manual_seed(0)
    ref = EncodecModel.encodec_model_24khz(pretrained=False)
    raw = directory / "raw.th"
    torch.save(ref.state_dict(), raw)
    ckpt = directory / f"encodec_24khz-{sha256_file(raw)[:8]}.th"
    raw.rename(ckpt)
    return ref, ckpt


def test_pretrained_local_checkpoint(tmp_path):
    """encodec's own 24 kHz model state dict, written here, loads and codes identically."""
    ref, ckpt = encodec_24khz_file(tmp_path)
    tok = AudioTokenizer.from_pretrained("encodec_24khz", ckpt, levels=8)
    assert tok.sample_rate == 24000 and tok.n_levels == 8 and tok.codebook_size == 1024
    x = torch.randn(1, 1, 24000) * 0.1
    ref.set_target_bandwidth(6.0)  # 6 kbps = 8 levels
    with torch.no_grad():
        want = ref.encode(x)[0][0][0].numpy()
    got = tok.encode(Waveform(x[0].numpy(), 24000))
    np.testing.assert_array_equal(got, want)
    # Missing file (a directory without the published name), wrong checksum, bad name.
    with pytest.raises(MediaError, match="not found"):
        AudioTokenizer.from_pretrained("encodec_24khz", tmp_path / "empty_dir")
    bad = tmp_path / "encodec_24khz-deadbeef.th"
    bad.write_bytes(ckpt.read_bytes())
    with pytest.raises(MediaError, match="checksum"):
        AudioTokenizer.from_pretrained("encodec_24khz", bad)
    with pytest.raises(MediaError, match="unknown"):
        AudioTokenizer.from_pretrained("encodec_96khz", ckpt)


def test_rates_and_channels_converted(tiny, tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 300 * t)], 1)
    sf.write(tmp_path / "st8k.wav", stereo.astype(np.float32), 8000)
    assert tiny.encode(tmp_path / "st8k.wav").shape == (3, 50)
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "m44.flac", 0.3 * np.sin(2 * np.pi * 440 * t), 44100)
    assert tiny.encode(tmp_path / "m44.flac").shape == (3, 50)  # 1 s at 8 kHz / hop 160
    stereo_tok = make_tiny(channels=2)
    codes = stereo_tok.encode(tmp_path / "m44.flac")  # mono -> duplicated channels
    assert codes.shape == (3, 50) and stereo_tok.decode(codes).samples.shape == (2, 8000)


def test_long_file_is_chunked(tmp_path):
    tok = make_tiny(chunk_seconds=30.0)
    n = 10 * 60 * 8000  # ten minutes at 8 kHz
    rng = np.random.default_rng(0)
    x = (0.05 * rng.standard_normal(n)).astype(np.float32)
    sf.write(tmp_path / "long.wav", x, 8000, subtype="PCM_16")
    codes = tok.encode(tmp_path / "long.wav")
    assert tok.last_n_chunks == 20
    assert codes.shape == (3, n // HOP)
    head = tok.encode(Waveform(sf.read(tmp_path / "long.wav", frames=30 * 8000)[0][None], 8000))
    np.testing.assert_array_equal(codes[:, : head.shape[1]], head)  # chunks line up on frames


def test_silence_nan_and_unreadable(tiny, tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(4000, dtype=np.float32), 8000)
    codes = tiny.encode(tmp_path / "silence.wav")
    assert codes.shape == (3, 25)
    assert np.isfinite(tiny.decode(codes).samples).all()
    nan = np.zeros(4000, dtype=np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 8000, subtype="FLOAT")
    with pytest.raises(MediaError, match=r"nan\.wav.*NaN"):
        tiny.encode(tmp_path / "nan.wav")
    with pytest.raises(MediaError, match="NaN or infinite"):
        tiny.encode(Waveform(np.array([[0.0, np.inf]], dtype=np.float32), 8000))
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00not really audio")
    with pytest.raises(MediaError, match=r"junk\.wav.*cannot read"):
        tiny.encode(tmp_path / "junk.wav")
    with pytest.raises(MediaError, match="missing.wav"):
        tiny.encode(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    with pytest.raises(MediaError, match="no audio samples"):
        tiny.encode(tmp_path / "empty.wav")


@pytest.mark.parametrize("path", sorted((ROOT / "tokenizers" / "audio").glob("*.yaml")))
def test_specs_parse(path):
    from native_mm.tokenizers.audio_train import AudioTrainSpec
    from native_mm.tokenizers.trainer import load_spec

    spec = load_spec(AudioTrainSpec, path)
    assert spec.model.hop_length > 0 and spec.trainer.max_steps > 0


def test_train_cli_resumes_and_eval(tmp_path):
    from native_mm.cli import main

    out = tmp_path / "run"
    args = ["tokenizer", "train", "audio", "--config", str(ROOT / "tokenizers/audio/tiny.yaml")]
    assert main([*args, "--out", str(out), "trainer.max_steps=2"]) == 0
    assert main([*args, "--out", str(out), "trainer.max_steps=4"]) == 0  # resumes at step 2
    runs = [json.loads(line) for line in (out / "train_log.txt").read_text().splitlines()]
    assert [r["global_step"] for r in runs] == [2, 4]
    assert runs[1]["disc_steps"] == 2  # disc_start=2: only the resumed steps train D
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "samples" / "final" / "spectrogram.png").is_file()
    tok = AudioTokenizer.load(out)
    data = tmp_path / "wavs"
    data.mkdir()
    for i, c in enumerate(speech_clips(2)):
        sf.write(data / f"{i}.wav", c, 8000)
    assert main(["tokenizer", "eval", "audio", "--tokenizer", str(out), "--data", str(data),
                 "--out", str(tmp_path / "m.json")]) == 0  # fmt: skip
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["tokenizer_fingerprint"] == tok.fingerprint()
    assert m["splits"]["all"]["clips"] == 2 and math.isfinite(m["splits"]["all"]["si_snr_db"])
    assert main(["tokenizer", "train", "audio", "--config", str(tmp_path / "nope.yaml"),
                 "--out", str(out)]) == 1  # fmt: skip


def test_frame_rate_is_part_of_the_tokenizer_interface(tiny, tiny_tokenizers):
    """Generation asks any tokenizer for its frame rate: audio has one, images none."""
    from native_mm.generation import audio_frames_for

    assert tiny.frame_rate == tiny.config.frame_rate > 0
    assert tiny_tokenizers["image"].frame_rate is None
    rate = tiny_tokenizers["audio"].frame_rate
    assert audio_frames_for(2.0, tiny_tokenizers) == round(2.0 * rate)
