"""``native-mm export`` of a run into a self-contained model directory, and the Python API
that loads it (issue 19): the directory generates what its checkpoint generates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from native_mm.checkpoint import CheckpointError, load_checkpoint
from native_mm.cli import main as cli
from native_mm.constraints import GenerationError, OutputSpec
from native_mm.generation import SamplingConfig, audio_frames_for, generate
from native_mm.pretrained import from_pretrained
from native_mm.tokenizers.base import TokenizerSet, Waveform

EVAL_MD = "| direction | accuracy |\n| --- | --- |\n| text → image | 97.3% |\n"


@pytest.fixture(scope="module")
def run(tokenizer_dir, checkpoint, tmp_path_factory):
    """A run directory as `native-mm run` leaves it, around the tiny random checkpoint."""
    root = tmp_path_factory.mktemp("run")
    (root / "lm" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, root / "lm" / "checkpoints" / "last.ckpt")
    shutil.copy(f"{checkpoint}.sha256.json", root / "lm" / "checkpoints" / "last.ckpt.sha256.json")
    shutil.copytree(tokenizer_dir, root / "tokenizers")
    (root / "eval").mkdir()
    (root / "eval" / "eval.md").write_text(EVAL_MD)
    settings = {"text": {"temperature": 0.0}, "image": {"temperature": 0.7, "top_k": 20}}
    (root / "lm" / "generation_config.json").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def model_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "digits-tiny"
    assert cli(["export", "--ckpt", str(run), "--out", str(out)]) == 0
    return out


def test_the_model_directory_holds_everything(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "vocab.json", "tokenizers", "README.md",
            "generation_config.json"} <= names  # fmt: skip
    TokenizerSet.load(model_dir / "tokenizers")  # a whole set, manifest last
    card = (model_dir / "README.md").read_text()
    assert "# digits-tiny" in card and "| text → image | 97.3% |" in card  # the run's eval
    assert "temperature=0.7, top_k=20" in card and 'from_pretrained("digits-tiny")' in card


def test_the_directory_generates_what_its_checkpoint_does(run, model_dir):
    """Same prompt, same seed: the exported directory through the Python API and the
    run's checkpoint through the library give the same ids, for each output modality."""
    tset = TokenizerSet.load(run / "tokenizers")
    lm = load_checkpoint(run / "lm" / "checkpoints" / "last.ckpt", tset)
    model = from_pretrained(model_dir)
    assert model.tokenizers.fingerprints() == tset.fingerprints()
    prompt = ["a handwritten seven", {"text": "please"}]
    for output, extra in [("text", {}), ("image", {"image_size": (2, 2)}),
                          ("audio", {"audio_seconds": 0.01})]:  # fmt: skip
        [got] = model.generate(prompt, output, max_new_tokens=24, seed=5, **extra)
        settings = model.defaults.for_output(output)
        frames = audio_frames_for(0.01, tset) if output == "audio" else None
        spec = OutputSpec(output, extra.get("image_size"), frames)
        sampling = SamplingConfig(max_new_tokens=24, seed=5, **{"temperature": 1.0, **settings})
        [want] = generate(lm.model, prompt, tset, spec, sampling, layout=lm.layout)
        assert np.array_equal(got.ids, want.ids), output
        assert got.spans and got.spans[-1].kind == output


def test_prompt_items_of_every_type(model_dir, tmp_path):
    """A PIL image, a waveform array, a Waveform and paths give the same ids as the
    ``{kind: path}`` form the library always took."""
    model = from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    wav = (0.1 * np.sin(np.arange(4000) / 7)).astype(np.float32)
    import soundfile

    soundfile.write(tmp_path / "x.wav", wav, 8000)

    def ids(prompt):
        return model.generate(prompt, "text", max_new_tokens=8, seed=0)[0].ids

    want = ids([{"image": str(tmp_path / "x.png")}, {"audio": str(tmp_path / "x.wav")}, "seven"])
    assert np.array_equal(ids([img, (wav, 8000), "seven"]), want)
    assert np.array_equal(ids([tmp_path / "x.png", Waveform(wav[None], 8000), "seven"]), want)
    assert np.array_equal(ids([img, (torch.from_numpy(wav), 8000), "seven"]), want)
    with pytest.raises(GenerationError, match="unknown sampling options \\['temprature'\\]"):
        model.generate("seven", "text", temprature=0.5)
    with pytest.raises(GenerationError, match="prompt item 0 .*not an image or audio"):
        model.generate([tmp_path / "notes.txt"], "text")


def test_generation_config_gives_the_defaults(model_dir):
    """The directory's text setting is greedy: any seed, one answer; a flag overrides it."""
    model = from_pretrained(model_dir)
    a, b = (model.generate("seven", "text", max_new_tokens=12, seed=s)[0].ids for s in (1, 2))
    assert np.array_equal(a, b)
    c, d = (model.generate("seven", "text", max_new_tokens=12, seed=s, temperature=1.5)[0].ids
            for s in (1, 2))  # fmt: skip
    assert not np.array_equal(c, d)


def test_generate_cli_reads_the_directory_alone(run, model_dir, tmp_path, capsys):
    common = ["--text", "seven", "--output-modality", "image", "--image-size", "2x2",
              "--max-new-tokens", "12", "--seed", "3"]  # fmt: skip
    assert cli(["generate", "--ckpt", str(model_dir), *common, "--out", str(tmp_path / "a")]) == 0
    assert cli(["generate", "--ckpt", str(run / "lm/checkpoints/last.ckpt"), "--tokenizers",
                str(run / "tokenizers"), *common, "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    a, b = (tmp_path / "a/sample0_0.png").read_bytes(), (tmp_path / "b/sample0_0.png").read_bytes()
    assert a == b
    err = capsys.readouterr().err
    assert "temperature=0.7, top_k=20" in err  # the model directory's image settings


def test_device_and_dtype(model_dir, tmp_path, capsys):
    if not torch.cuda.is_available():
        rc = cli(["generate", "--ckpt", str(model_dir), "--text", "x", "--device", "cuda",
                  "--out", str(tmp_path)])  # fmt: skip
        assert rc == 1 and "no CUDA GPU is visible" in capsys.readouterr().err
    model = from_pretrained(model_dir, dtype="bfloat16")
    assert model.pretrained.model.wte.weight.dtype == torch.bfloat16
    [g] = model.generate("seven", "image", image_size=(2, 2), max_new_tokens=12)
    assert g.outputs[-1].size[0] > 0  # bf16 decodes to a real image on CPU (tiny shapes)
    with pytest.raises(GenerationError, match="unknown dtype 'fp8'"):
        from_pretrained(model_dir, dtype="fp8")


def test_export_needs_a_tokenizer_set(checkpoint, tmp_path, capsys):
    lone = tmp_path / "lone.pt"
    shutil.copy(checkpoint, lone)
    with pytest.raises(CheckpointError, match="give --tokenizers DIR"):
        from native_mm.release import export

        export(lone, tmp_path / "out")
    assert cli(["export", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such checkpoint file, model or run directory" in capsys.readouterr().err
