"""The model's own sampling settings (generation_config.json): found beside a checkpoint,
checked on load with errors naming the file, copied by export, used by generate."""

from __future__ import annotations

import json

import pytest

from native_mm import generation_config as gc
from native_mm.constraints import GenerationError


def test_roundtrip_find_and_per_output_settings(tmp_path) -> None:
    d = gc.GenerationDefaults({"text": {"temperature": 0.0},
                               "image": {"temperature": 0.5, "cfg_scale": 4.0}}, 16)  # fmt: skip
    lm = tmp_path / "lm"
    (lm / "checkpoints").mkdir(parents=True)
    path = gc.save(d, lm)
    assert gc.find(lm / "checkpoints" / "last.ckpt") == path == gc.find(lm)
    assert gc.find(tmp_path / "elsewhere.ckpt") is None
    back = gc.load(path)
    assert back.for_output("image") == {"temperature": 0.5, "cfg_scale": 4.0}
    assert back.for_output(None) == {"temperature": 0.0}  # the model picks: no guidance
    assert back.for_output("audio") == {} and back.prompt_image_size == 16


@pytest.mark.parametrize(("raw", "message"), [
    ("{", "cannot read the generation config"),
    ('{"image": {"temperature": NaN}}', "image: temperature must be finite"),
    ('{"audio": {"cfg_scale": -2}}', "audio: cfg_scale must be in"),
    ('{"text": {"beam": 4}}', "unknown settings"),
    ('{"video": {}}', "unknown keys"),
    ('{"prompt_image_size": 0}', "prompt_image_size must be"),
    ("[1, 2]", "expected a JSON object"),
])  # fmt: skip
def test_bad_files_are_refused_naming_the_file(tmp_path, raw, message) -> None:
    path = tmp_path / gc.FILE
    path.write_text(raw)
    with pytest.raises(GenerationError, match=message) as e:
        gc.load(path)
    assert str(path) in str(e.value)


def test_generate_says_which_settings_it_used_and_export_copies_them(
    tiny_tokenizers, tmp_path, capsys
) -> None:
    import torch

    from native_mm.checkpoint import save_checkpoint
    from native_mm.cli import main as cli
    from native_mm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=tiny_tokenizers.vocab.size))
    tiny_tokenizers.save(tmp_path / "tok")
    save_checkpoint(tmp_path / "m.pt", model, tiny_tokenizers.manifest())
    path = gc.save(gc.GenerationDefaults({"text": {"temperature": 0.0, "top_k": 5}}), tmp_path)
    base = ["--ckpt", str(tmp_path / "m.pt"), "--tokenizers", str(tmp_path / "tok")]
    run = [*base, "--text", "hi", "--output-modality", "text", "--max-new-tokens", "2"]
    assert cli(["generate", *run, "--out", str(tmp_path / "o1")]) == 0
    err = capsys.readouterr().err
    assert "sampling temperature=0.0, top_k=5" in err and str(path) in err
    assert cli(["generate", *run, "--temperature", "0.7", "--out", str(tmp_path / "o2")]) == 0
    assert "sampling temperature=0.7, top_k=5" in capsys.readouterr().err  # the flag wins
    assert cli(["export", *base, "--out", str(tmp_path / "export")]) == 0
    copied = json.loads((tmp_path / "export" / gc.FILE).read_text())
    assert copied["text"] == {"temperature": 0.0, "top_k": 5}
    path.unlink()  # no config: the library's defaults, and the command says so
    assert cli(["generate", *run, "--out", str(tmp_path / "o3")]) == 0
    assert "sampling temperature=1.0 " in capsys.readouterr().err.replace(";", " ")
