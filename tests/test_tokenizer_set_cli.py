"""``native-mm tokenizer set`` (issue 18): a set from the tokenizers a user names, for any
subset of modalities, including Meta's EnCodec from a local weights file; clear errors
for a missing or mismatched tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from native_mm.cli import main as cli
from native_mm.tokenizers.base import TokenizerSet


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_tokenizers) -> Path:
    """Each tiny tokenizer saved in its own directory, as `tokenizer train` leaves them."""
    root = tmp_path_factory.mktemp("parts")
    for modality, tok in tiny_tokenizers.items():
        tok.save(root / modality)
    return root


@pytest.mark.parametrize("mods", [("text",), ("text", "image"), ("text", "audio"),
                                  ("text", "image", "audio")])  # fmt: skip
def test_any_subset_of_modalities(parts, tiny_tokenizers, tmp_path, capsys, mods):
    args = [a for m in mods for a in (f"--{m}", str(parts / m))]
    out = tmp_path / "set"
    assert cli(["tokenizer", "set", *args, "--image-max-grid", "8", "--out", str(out)]) == 0
    assert f"tokenizer set -> {out}" in capsys.readouterr().out
    tset = TokenizerSet.load(out)
    assert [m for m, _ in tset.items()] == list(mods)
    assert tset.fingerprints() == {m: tiny_tokenizers[m].fingerprint() for m in mods}
    assert tset.vocab.image_codes == (32 if "image" in mods else 0)
    assert tset.vocab.audio_levels == (3 if "audio" in mods else 0)
    if "audio" in mods:  # the set's tokenizer codes as the original does
        x = np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32)
        from native_mm.tokenizers.base import Waveform

        w = Waveform(x[None], 8000)
        np.testing.assert_array_equal(tset.audio.encode(w), tiny_tokenizers.audio.encode(w))


def test_a_pretrained_encodec_from_a_local_file(parts, tmp_path):
    from tests.test_audio_tokenizer import encodec_24khz_file

    ref, weights = encodec_24khz_file(tmp_path)
    out = tmp_path / "set"
    audio = ["--audio", f"encodec_24khz:{weights}", "--audio-levels", "4"]
    assert cli(["tokenizer", "set", "--text", str(parts / "text"), *audio, "--out", str(out)]) == 0
    tset = TokenizerSet.load(out)
    assert tset.audio.sample_rate == 24000 and tset.vocab.audio_levels == 4
    assert tset.vocab.audio_codes == 1024
    x = torch.randn(1, 1, 24000) * 0.1
    ref.set_target_bandwidth(3.0)  # 3 kbps = 4 levels
    with torch.no_grad():
        want = ref.encode(x)[0][0][0].numpy()
    from native_mm.tokenizers.base import Waveform

    np.testing.assert_array_equal(tset.audio.encode(Waveform(x[0].numpy(), 24000)), want)


def test_missing_or_mismatched_tokenizers_are_named(parts, tmp_path, capsys):
    base = ["tokenizer", "set", "--text", str(parts / "text")]
    cases = [
        (["--image", str(tmp_path / "nope")], "nope: no image tokenizer directory there"),
        (["--audio", str(parts / "image")], "holds a 'image' tokenizer, not 'audio'"),
        (["--image", str(parts / "audio")], "holds a 'audio' tokenizer, not 'image'"),
        (["--audio", f"encodec_24khz:{tmp_path}"], "pretrained EnCodec checkpoint not found"),
        (["--audio", str(parts / "audio"), "--audio-levels", "2"], "applies to a pretrained"),
        (["--text", str(parts / "image")], "holds a 'image' tokenizer, not 'text'"),
    ]
    for extra, message in cases:
        assert cli([*base, *extra, "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "o" / "manifest.json").exists()
    assert cli([*base, "--out", str(tmp_path / "o")]) == 0
    assert cli([*base, "--out", str(tmp_path / "o")]) == 1  # never over an existing set
    assert "holds a tokenizer set already" in capsys.readouterr().err


@pytest.mark.parametrize("media", [None, "image", "audio"])
def test_a_model_trains_on_a_single_media_set(parts, tmp_path, capsys, media):
    """A set of text alone, text + image or text + audio: tokenize its own kind of
    documents and fit a few steps (smoke)."""
    import json

    import soundfile as sf
    from PIL import Image

    from tests.doubles import fit_args

    args = ["--text", str(parts / "text")] + ([f"--{media}", str(parts / media)] if media else [])
    assert (
        cli(["tokenizer", "set", *args, "--image-max-grid", "8", "--out", str(tmp_path / "t")]) == 0
    )
    rng = np.random.default_rng(0)
    lines = []
    for k in range(12):
        segs = [{"text": f"sample number {k}"}]
        if media == "image":
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(tmp_path / f"{k}.png")
            segs.append({"image": f"{k}.png"})
        elif media == "audio":
            sf.write(tmp_path / f"{k}.wav", rng.normal(0, 0.1, 2000).astype(np.float32), 8000)
            segs.append({"audio": f"{k}.wav"})
        lines.append(json.dumps({"id": str(k), "segments": segs}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    shards = tmp_path / "shards"
    assert cli(["tokenize", str(tmp_path / "d.jsonl"), "--tokenizers", str(tmp_path / "t"),
                "--out", str(shards), "--workers", "0"]) == 0  # fmt: skip
    held = json.loads((shards / "manifest.json").read_text())["modality_tokens"]
    assert held["text"] > 0 and all((held[m] > 0) == (m == media) for m in ("image", "audio"))
    assert cli(fit_args(shards, tmp_path / "run", 2)) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_add_specials_to_an_existing_set(parts, tmp_path, capsys):
    """--from SET --add-specials: the same tokenizers (fingerprints), every old id kept,
    the new specials after them; added twice, they accumulate in order."""
    base = tmp_path / "base"
    args = ["--text", str(parts / "text"), "--image", str(parts / "image")]
    assert cli(["tokenizer", "set", *args, "--image-max-grid", "8", "--out", str(base)]) == 0
    assert cli(["tokenizer", "set", "--from", str(base), "--add-specials", "<user>, <assistant>",
                "--out", str(tmp_path / "chat")]) == 0  # fmt: skip
    assert cli(["tokenizer", "set", "--from", str(tmp_path / "chat"), "--add-specials", "<eot>",
                "--out", str(tmp_path / "chat2")]) == 0  # fmt: skip
    old, new = TokenizerSet.load(base), TokenizerSet.load(tmp_path / "chat2")
    assert new.fingerprints() == old.fingerprints() and new.vocab.image_max_grid == 8
    assert new.vocab.added == ("<user>", "<assistant>", "<eot>") and old.vocab.grows_into(new.vocab)
    assert cli(["tokenizer", "set", "--from", str(base), "--add-specials", "<eos>",
                "--out", str(tmp_path / "bad")]) == 1  # fmt: skip
    assert "added specials" in capsys.readouterr().err
