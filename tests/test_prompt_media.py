"""Prompts from the real world (issue 26): random photos and clips through ``generate``,
the eval's prompt path and the Python API, each generating or refused in one line naming
the input and the limit; every numeric option checked for finite, in-range values."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from native_mm.checkpoint import save_checkpoint
from native_mm.constraints import GenerationError, OutputSpec
from native_mm.generate_cli import main as generate_main
from native_mm.generation import PromptError, SamplingConfig, encode_prompt, generate
from native_mm.model import ModelConfig, Transformer
from native_mm.prompt_media import PromptMedia, path_problem
from native_mm.sequence import SequenceCodec
from native_mm.tokenizers.base import Waveform

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "PA"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_tokenizers) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=tiny_tokenizers.vocab.size)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def saved(lm, tiny_tokenizers, tmp_path_factory) -> list[str]:
    """``--ckpt ... --tokenizers ...`` of the tiny model on disk."""
    root = tmp_path_factory.mktemp("model")
    tiny_tokenizers.save(root / "tok")
    save_checkpoint(root / "model.pt", lm, tiny_tokenizers.manifest())
    return ["--ckpt", str(root / "model.pt"), "--tokenizers", str(root / "tok")]


def _random_image(rng: np.random.Generator) -> Image.Image:
    """A gradient of random size (1..4096 a side, log-uniform), mode and EXIF turn."""
    w, h = (int(round(np.exp(rng.uniform(0, np.log(4096))))) for _ in range(2))
    img = Image.linear_gradient("L").resize((w, h)).convert(str(rng.choice(MODES)))
    if rng.random() < 0.3:
        exif = Image.Exif()
        exif[0x0112] = int(rng.integers(1, 9))  # orientation 1..8
        img.info["exif"] = exif.tobytes()
    return img


def _save(img: Image.Image, path: Path, rng: np.random.Generator) -> Path:
    """Saved in a random format that takes the mode (PNG when none does)."""
    for fmt in rng.permutation(list(FORMATS)):
        out = path.with_suffix(FORMATS[str(fmt)])
        try:
            img.save(out, format=str(fmt), exif=img.info.get("exif", b""))
            return out
        except (OSError, ValueError, KeyError, TypeError):
            out.unlink(missing_ok=True)
    img.convert("RGB").save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _one_line(message: str, *names: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for name in names:
        assert name in message, (name, message)


def test_random_images_become_prompts_in_every_path(lm, tiny_tokenizers, saved, tmp_path) -> None:
    """Sizes 1x1..4096x4096, every mode, EXIF turns: the API, the eval's prompt path and
    the CLI all generate, with a grid the vocabulary can express."""
    from native_mm.apps.digits.evaluation import model_generator
    from native_mm.apps.digits.prompts import Item
    from native_mm.apps.digits.recipe import EvalConfig

    rng = np.random.default_rng(0)
    g = tiny_tokenizers.vocab.image_max_grid
    eval_run = model_generator(lm, tiny_tokenizers, EvalConfig(image_size=32, batch_size=4))
    samp = SamplingConfig(max_new_tokens=2, seed=0)
    for i in range(24):
        img = _random_image(rng)
        value = img if i % 3 == 0 else str(_save(img, tmp_path / f"img{i}", rng))
        fit = str(rng.choice(["pad", "crop"]))
        size = None if i % 2 else int(rng.integers(32, 65))
        media = PromptMedia(size, fit)
        if size is not None and round(size / 4) ** 2 + 4 > 253:  # context 256 - <bos> - 2
            with pytest.raises(PromptError) as refused:
                generate(lm, [("image", value)], tiny_tokenizers, OutputSpec("text"), samp,
                         media=media)  # fmt: skip
            _one_line(str(refused.value), f"image_size={size} px", "room for 253")
            continue
        ids = encode_prompt([("image", value)], tiny_tokenizers, media=media, block_size=256)
        (span,) = SequenceCodec(tiny_tokenizers.vocab).decode(ids)
        assert max(span.codes.shape) <= g, (img.size, img.mode, span.codes.shape)
        assert span.codes.size + 4 <= 253
        if size is not None:
            assert span.codes.shape == (round(size / 4),) * 2
        (out,) = generate(lm, [("image", value)], tiny_tokenizers, OutputSpec("text"), samp,
                          media=media)  # fmt: skip
        assert out.finish_reason
        if i % 4 == 1:
            assert len(eval_run("image->text", [Item([("image", value)], 0)])) == 1
        if i % 6 == 2:
            args = [*saved, "--image", value, "--output-modality", "text", "--max-new-tokens",
                    "2", "--out", str(tmp_path / f"out{i}")]  # fmt: skip
            assert generate_main(args) == 0


def test_exif_orientation_stands_a_photo_up(tiny_tokenizers, tmp_path) -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    wide.save(path, exif=exif.tobytes())
    assert tiny_tokenizers.image.load_rgb(str(path)).size == (20, 40)
    assert tiny_tokenizers.image.load_rgb(Image.open(path)).size == (20, 40)


def _clip(rng: np.random.Generator) -> Waveform:
    rate = int(rng.choice([8000, 11025, 16000, 22050, 24000, 32000, 37800, 44100, 48000]))
    seconds = float(np.exp(rng.uniform(np.log(1e-4), np.log(3.0))))
    n = max(1, int(seconds * rate))
    channels = int(rng.integers(1, 7))
    x = 0.3 * np.sin(np.arange(n) / rate * 2 * np.pi * 220.0)
    return Waveform(np.tile(x, (channels, 1)).astype(np.float32), rate)


def test_random_clips_generate_or_are_refused_naming_the_limit(
    lm, tiny_tokenizers, saved, tmp_path, capsys
) -> None:
    """Rates 8-48 kHz, 1-6 channels, 1 sample to 3 s: a clip that fits generates; a longer
    one is refused in one line with its duration and the longest clip that fits."""
    from native_mm.apps.digits.evaluation import model_generator
    from native_mm.apps.digits.prompts import Item
    from native_mm.apps.digits.recipe import EvalConfig

    rng = np.random.default_rng(1)
    eval_run = model_generator(lm, tiny_tokenizers, EvalConfig(batch_size=4))
    samp = SamplingConfig(max_new_tokens=2, seed=0)
    frames_per_s, levels = tiny_tokenizers.audio.frame_rate, tiny_tokenizers.vocab.audio_levels
    outcomes = set()
    for i in range(24):
        wav = _clip(rng)
        path = tmp_path / f"clip{i}.{['wav', 'flac', 'ogg'][i % 3]}"
        sf.write(path, wav.samples.T, wav.sample_rate)
        value = wav if i % 2 else str(path)
        fits = np.ceil(wav.duration * frames_per_s) * levels + 2 <= 254 - 1
        try:
            (out,) = generate(lm, [("audio", value)], tiny_tokenizers, OutputSpec("text"), samp)
            outcomes.add("generated")
        except PromptError as e:
            outcomes.add("refused")
            _one_line(str(e), "prompt segment 0 (audio", "s of audio", "at most")
            assert not fits or path.suffix == ".ogg", (wav.duration, str(e))
            continue
        assert fits or path.suffix == ".ogg", wav.duration
        if i % 4 == 1:
            assert len(eval_run("audio->text", [Item([("audio", value)], 0)])) == 1
        if i % 4 == 0:
            args = [*saved, "--audio", str(path), "--output-modality", "text",
                    "--max-new-tokens", "2", "--out", str(tmp_path / f"out{i}")]  # fmt: skip
            assert generate_main(args) == 0
    assert outcomes == {"generated", "refused"}


def test_cli_refuses_a_long_clip_in_one_line(saved, tmp_path, capsys) -> None:
    from native_mm.cli import main as cli

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(48000 * 2, np.float32), 48000)
    rc = cli(["generate", *saved, "--audio", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    _one_line(err.strip().splitlines()[-1], "long.wav", "2.00 s of audio", "at most 0.17 s")


# ---- things that are not files ----------------------------------------------------------------
def test_fifo_device_directory_and_broken_link_are_named(saved, tmp_path, capsys) -> None:
    from native_mm.cli import main as cli

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "never.png")
    cases = {
        str(fifo): "named pipe (FIFO)",
        "/dev/zero": "character device",
        str(tmp_path): "a directory",
        str(link): "broken symbolic link",
        str(tmp_path / "missing.wav"): "no such file",
    }
    for path, what in cases.items():
        assert what in (path_problem(path) or "no such file")
        for flag in ("--audio", "--image"):
            rc = cli(["generate", *saved, flag, path, "--out", str(tmp_path / "o")])
            err = capsys.readouterr().err
            assert rc == 1
            _one_line(err.strip().splitlines()[-1], path, what)


# ---- numeric options --------------------------------------------------------------------------
GENERATE_NUMBERS = {
    "--temperature": ["101", "-0.5"],
    "--top-k": ["0", "2.5"],
    "--top-p": ["0", "1.5"],
    "--cfg-scale": ["-1", "1e9"],
    "--seed": ["-1", "1e3"],
    "--max-new-tokens": ["0", "-3"],
    "--num-samples": ["0", "5000"],
    "--audio-seconds": ["0", "-1"],
    "--max-image-grid": ["0", "1.5"],
    "--prompt-image-size": ["0", "-16"],
}


def test_every_numeric_generate_option_refuses_nonfinite_and_out_of_range(
    saved, tmp_path, capsys
) -> None:
    from native_mm.cli import main as cli

    for flag, bad in GENERATE_NUMBERS.items():
        for value in ["nan", "inf", "-inf", *bad]:
            with pytest.raises(SystemExit) as stop:
                cli(["generate", *saved, "--text", "hi", f"{flag}={value}", "--out", str(tmp_path)])
            assert stop.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"argument {flag}:" in err and value in err, err
    parser_flags = _numeric_flags(generate_main) - {"--image-size"}  # HxW: its own parser
    assert parser_flags <= set(GENERATE_NUMBERS), parser_flags - set(GENERATE_NUMBERS)


def _numeric_flags(entry) -> set[str]:
    """The flags of a verb's parser whose type is not a plain string (walks the parser)."""
    import argparse

    seen: set[str] = set()
    original = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        for action in self._actions:
            if action.type not in (None, str) and action.option_strings:
                seen.add(action.option_strings[0])
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            entry([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return seen


def test_every_numeric_eval_option_refuses_nonfinite_and_out_of_range(tmp_path, capsys) -> None:
    import dataclasses

    from native_mm.apps.digits.evaluation import main as eval_main
    from native_mm.apps.digits.recipe import EVAL_RANGES, EvalConfig
    from native_mm.cli import main as cli

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    assert names == set(EVAL_RANGES), names ^ set(EVAL_RANGES)
    base = ["eval", "--ckpt", "x.ckpt", "--tokenizers", "tok", "--out", str(tmp_path)]
    for name, (low, high, integer) in EVAL_RANGES.items():
        flag = "--" + name.replace("_", "-")
        bad = [str(low - 1) if low is not None else None, str(high * 2) if high else None]
        if not integer:
            bad += ["nan", "inf", "-inf"]
        for value in filter(None, bad):
            rc = cli([*base, f"{flag}={value}"])
            err = capsys.readouterr().err
            assert rc in (1, 2), (flag, value)
            _one_line(err.strip().splitlines()[-1], flag)
    assert _numeric_flags(eval_main) == {"--" + n.replace("_", "-") for n in names}


def test_api_options_refuse_nonfinite_values_naming_them() -> None:
    from native_mm.apps.digits.recipe import EvalConfig, RecipeError

    nan, inf = float("nan"), float("inf")
    cases = [
        (lambda: SamplingConfig(temperature=nan), "temperature"),
        (lambda: SamplingConfig(top_p=nan), "top_p"),
        (lambda: SamplingConfig(cfg_scale=inf), "cfg_scale"),
        (lambda: SamplingConfig(top_k=float("nan")), "top_k"),
        (lambda: SamplingConfig(max_new_tokens=inf), "max_new_tokens"),
        (lambda: OutputSpec("image", image_size=(nan, 2)), "image_size"),
        (lambda: OutputSpec("audio", audio_frames=-inf), "audio_frames"),
        (lambda: OutputSpec(max_image_grid=0), "max_image_grid"),
        (lambda: PromptMedia(image_size=0), "image_size"),
        (lambda: PromptMedia(image_fit="stretch"), "image_fit"),
    ]
    for make, name in cases:
        with pytest.raises(GenerationError, match=name):
            make()
    with pytest.raises(RecipeError, match=r"temperature_media \(--temperature-media\)"):
        EvalConfig(temperature_media=nan)


def test_tiny_positive_temperature_samples_like_greedy(lm, tiny_tokenizers) -> None:
    """1e-30 would overflow float32 logits into NaN; it samples as greedy instead."""
    from native_mm.generation import generate_ids

    prompts, vocab = [[1, 5, 6, 7]], tiny_tokenizers.vocab
    greedy = generate_ids(lm, prompts, vocab, None, SamplingConfig(8, temperature=0))
    tiny = generate_ids(lm, prompts, vocab, None, SamplingConfig(8, temperature=1e-30))
    assert np.array_equal(greedy[0].ids, tiny[0].ids)
