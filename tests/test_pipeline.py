"""The main job's pipeline, CI-sized: corpus, eval logic and a smoke run of every stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from native_mm.apps.digits import images as digits
from native_mm.apps.digits import speech
from native_mm.apps.digits.corpus import DIRECTIONS, CorpusConfig, CorpusError, build_corpus
from native_mm.apps.digits.evaluation import (
    EvalConfig,
    Item,
    Judges,
    build_items,
    evaluate,
    parse_digit,
)
from native_mm.apps.digits.pipeline import STAGES, Pipeline, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "digits.yaml"
SMALL = dict(image_augment=1, audio_augment=1, max_images=30, max_clips=20,
             docs={d: 5 for d in DIRECTIONS} | {"mixed": 3})  # fmt: skip


@pytest.fixture(scope="module")
def judges() -> Judges:
    return Judges()


def test_parse_digit() -> None:
    assert parse_digit("a handwritten seven") == 7
    assert parse_digit("what digit is this? the digit 3") == 3
    assert parse_digit("Nine.") == 9
    assert parse_digit("someone said 4 = four") == 4
    assert parse_digit("eleven") == -1  # a word containing no digit word as a whole word
    assert parse_digit("") == -1


def test_corpus_is_deterministic_and_train_only(tmp_path: Path) -> None:
    a = build_corpus(CorpusConfig(**SMALL), tmp_path / "a")
    build_corpus(CorpusConfig(**SMALL), tmp_path / "b")
    text_a = (tmp_path / "a" / "documents.jsonl").read_text()
    assert text_a == (tmp_path / "b" / "documents.jsonl").read_text()
    assert a["documents"] == 5 * 6 + 3
    docs = [json.loads(line) for line in text_a.splitlines()]
    kinds = {tuple(next(iter(s)) for s in d["segments"]) for d in docs}
    assert ("text", "image") in kinds and ("audio", "image") in kinds
    # speech the model learns to generate is clean; recorded conditions only in prompts
    big = build_corpus(
        CorpusConfig(**SMALL | {"docs": {d: 60 for d in DIRECTIONS}}), tmp_path / "c"
    )
    assert big["documents"] == 360
    docs_c = [json.loads(x) for x in (tmp_path / "c" / "documents.jsonl").read_text().splitlines()]
    targets = [d["segments"][1]["audio"] for d in docs_c if "audio" in d["segments"][1]]
    prompts = [d["segments"][0]["audio"] for d in docs_c if "audio" in d["segments"][0]]
    assert targets and all(t.endswith("_0.wav") for t in targets)
    assert any(p.endswith("_1.wav") for p in prompts) and any(p.endswith("_0.wav") for p in prompts)
    # every image in the corpus comes from the train split, never from the held-out writers
    from PIL import Image

    train, _ = digits.load("train")
    held, _ = digits.load("heldout")
    train_px = {digits.to_pil(x, 16).tobytes() for x in train[:30]}
    held_px = {digits.to_pil(x, 16).tobytes() for x in held}
    originals = sorted((tmp_path / "a" / "images").glob("*_0.png"))
    assert len(originals) == 30
    for p in originals:
        px = Image.open(p).tobytes()
        assert px in train_px and px not in held_px
    held_voices = {c.voice.replace("+", "_") for c in speech.read_manifest(split="heldout")}
    for p in (tmp_path / "a" / "audio").glob("*.wav"):
        assert p.stem.rsplit("_", 2)[0] not in held_voices


def _oracle(shift: int):
    """A fake model answering digit + shift with ORIGINAL held-out media."""
    from native_mm.apps.digits.evaluation import heldout_clips, heldout_images

    imgs, iy = heldout_images(16)
    wavs, wy = heldout_clips()

    def run(direction: str, items: list[Item]) -> list:
        dst = direction.split("->")[1]
        out = []
        for it in items:
            d = (it.digit + shift) % 10
            if dst == "text":
                out.append(f"the digit {d}")
            elif dst == "image":
                out.append(imgs[int(np.flatnonzero(iy == d)[0])])
            else:
                out.append(wavs[int(np.flatnonzero(wy == d)[3])])
        return out

    return run


def test_eval_table_tells_right_from_wrong(judges: Judges, tmp_path: Path) -> None:
    cfg = EvalConfig(max_items=20, image_size=16)
    items = build_items(cfg)
    assert list(items) == list(DIRECTIONS)
    assert all(len(v) == 20 for v in items.values())
    good = evaluate(_oracle(0), items, judges, out=tmp_path, cfg=cfg, progress=False)
    bad = evaluate(_oracle(1), items, judges, cfg=cfg, progress=False)
    for d in DIRECTIONS:
        assert good["directions"][d]["accuracy"] >= 0.9, d
        assert bad["directions"][d]["accuracy"] <= 0.2, d
    table = (tmp_path / "eval.md").read_text()
    assert all(f"| {d} |" in table for d in DIRECTIONS)
    assert (tmp_path / "grid_text_to_image.png").is_file()
    assert list((tmp_path / "wav").glob("text_to_audio_*.wav"))


def test_eval_reports_accuracy_per_wording(judges: Judges) -> None:
    from native_mm.apps.digits.prompts import UNSEEN_WORDING, robustness_items

    items = robustness_items(EvalConfig(robustness_items=40, image_size=16))[UNSEEN_WORDING]
    right = _oracle(0)
    first = items["text->image"][0].wording

    def misreads_one(direction: str, its: list[Item]) -> list:  # wrong on one wording only
        wrong = _oracle(3)(direction, its)
        return [w if it.wording == first else r
                for it, r, w in zip(its, right(direction, its), wrong, strict=True)]  # fmt: skip

    rows = evaluate(misreads_one, items, judges, progress=False)["directions"]
    by = rows["text->image"]["by_wording"]
    assert len(by) == 4 and sum(v["n"] for v in by.values()) == 40
    assert by[first]["correct"] <= 1 and all(v["correct"] >= 9 for w, v in by.items() if w != first)


def test_smoke_pipeline_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(RECIPE, smoke=True)
    out = tmp_path / "run"
    report = Pipeline(recipe, out, log=lambda *a, **k: None).run()
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert all(s["status"] == "ran" for s in report["stages"])
    for path in (
        "corpus/documents.jsonl",
        "tokenizers/text/config.json",
        "tokenizers/image/weights.pt",
        "tokenizers/audio/weights.pt",
        "tokenizers/set/manifest.json",
        "shards/manifest.json",
        "lm/checkpoints/last.ckpt",
        "eval/eval.json",
        "eval/eval.md",
        "report.md",
    ):
        assert (out / path).is_file(), path
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert sorted(result["directions"]) == sorted(DIRECTIONS)
    assert result["steps"] == recipe["fit"]["overrides"]["trainer"]["max_steps"]  # grid titles
    assert set(report["eval"]) == set(DIRECTIONS)
    # the shards' audio layout (tokenize.audio_levels) travels into the checkpoint, so
    # generation and a stand-alone eval use it without being told
    from native_mm.apps.digits.evaluation import evaluate_checkpoint
    from native_mm.checkpoint import load_checkpoint
    from native_mm.constraints import OutputSpec
    from native_mm.generation import SamplingConfig, generate
    from native_mm.tokenizers.base import TokenizerSet, Waveform

    levels = recipe["tokenize"]["audio_levels"]
    shard_layout = json.loads((out / "shards/manifest.json").read_text())["layout"]
    assert shard_layout["audio"] == {"name": "frame_major", "levels": levels}
    tset = TokenizerSet.load(out / "tokenizers/set")
    lm = load_checkpoint(out / "lm/checkpoints/last.ckpt", tset)
    assert lm.layout.audio.levels == levels < lm.vocab.audio_levels
    (g,) = generate(lm.model, [("text", "say one")], tset, OutputSpec("audio", audio_frames=4),
                    SamplingConfig(max_new_tokens=32, seed=0), layout=lm.layout)  # fmt: skip
    (span,) = g.spans
    assert span.codes.shape == (levels, 4) and isinstance(g.outputs[0], Waveform)
    alone = evaluate_checkpoint(out / "lm/checkpoints/last.ckpt", out / "tokenizers/set",
                                tmp_path / "eval2", EvalConfig(max_items=2, batch_size=2,
                                audio_max_seconds=0.3, robustness_items=3),
                                progress=False)  # fmt: skip
    assert alone["layout"]["audio"]["levels"] == levels
    rob = alone["robustness"]  # inputs from outside the training distribution, judged alike
    counts = {g: {d: r["n"] for d, r in rows.items()} for g, rows in rob.items()}
    assert counts == {"unseen synthesizer": {"audio->text": 3, "audio->image": 3},
                      "unseen wording": {"text->image": 3, "text->audio": 3}}  # fmt: skip
    assert "| unseen wording | text->image |" in (tmp_path / "eval2" / "eval.md").read_text()
    assert "audio_judge_unseen_synth" in alone["judges"]
    # `native-mm eval --config RECIPE` takes the recipe's eval settings; flags win
    from native_mm.apps.digits.evaluation import main as eval_main

    full = load_recipe(RECIPE)["eval"]
    assert eval_main(["--ckpt", str(out / "lm/checkpoints/last.ckpt"), "--tokenizers",
                      str(out / "tokenizers/set"), "--out", str(tmp_path / "eval3"),
                      "--config", str(RECIPE), "--max-items", "2", "--batch-size", "2",
                      "--audio-max-seconds", "0.3", "--robustness-items", "1"]) == 0  # fmt: skip
    eval3 = json.loads((tmp_path / "eval3/eval.json").read_text())
    cfg = eval3["config"]
    assert cfg["max_items"] == 2 and eval3["layout"]["audio"]["levels"] == levels
    assert (cfg["cfg_scale_image"], cfg["cfg_scale_audio"]) == (
        full["cfg_scale_image"], full["cfg_scale_audio"]) != (None, None)  # fmt: skip
    # `native-mm generate` with no sampling flags samples as the recipe's eval does
    from native_mm import generate_cli
    from native_mm.apps.digits.recipe import eval_settings, generation_defaults

    saved = json.loads((out / "lm" / "generation_config.json").read_text())
    assert saved == generation_defaults(eval_settings(recipe)[0]).to_dict()
    used = {}
    monkeypatch.setattr(generate_cli, "stream", lambda *a: used.update(samp=a[4], media=a[7])
                        or iter(()))  # fmt: skip
    for modality in ("image", "audio"):
        assert generate_cli.main(["--ckpt", str(out / "lm/checkpoints/last.ckpt"),
                                  "--tokenizers", str(out / "tokenizers/set"), "--text", "7",
                                  "--output-modality", modality, "--out", str(tmp_path / "g")]
                                 ) == 0  # fmt: skip
        ev = recipe["eval"]
        want_t = ev.get(f"temperature_{modality}") or ev["temperature_media"]
        want_cfg = ev.get(f"cfg_scale_{modality}") or ev.get("cfg_scale")
        assert (used["samp"].temperature, used["samp"].cfg_scale) == (want_t, want_cfg)
        assert used["media"].image_size == recipe["corpus"]["image_size"]
    # a second run finds every artifact and skips every stage
    again = Pipeline(recipe, out, log=lambda *a, **k: None).run()
    assert all(s["status"] == "skipped" for s in again["stages"])
    # the second stage (recipes/digits_sft.yaml, smoke): chat set, conversations, a fit
    # from these weights per variant, the multi-turn and the six base directions
    from native_mm.apps.digits.sft import SFT, SFT_KEYS

    sft_path = REPO / "recipes" / "digits_sft.yaml"
    sft_recipe = load_recipe(sft_path, smoke=True, known=SFT_KEYS)
    sft_recipe["eval"] = {**sft_recipe["eval"], "max_items": 2, "robustness_items": 0}
    sft_recipe["variants"] = {"replay": 1.0}  # (no_replay: the same stages, one source less)
    results = SFT(sft_recipe, sft_path, out, tmp_path / "sft", log=lambda *a: None).run()
    assert set(results) == {"replay"}
    chat = results["replay"]["chat"]
    assert sorted(chat) == ["chat audio->text", "chat audio->text, then image",
                            "chat image->text", "chat image->text, then audio"]  # fmt: skip
    assert all(row["n"] == 2 for row in chat.values())
    replayed = yaml.safe_load((tmp_path / "sft/replay/lm/lm_config.yaml").read_text())
    assert [s["path"] for s in replayed["data"]["sources"]] == [
        str(tmp_path / "sft/shards"), str(out / "shards")]  # fmt: skip
    assert "| chat image->text, then audio |" in (tmp_path / "sft/report.md").read_text()


def test_recipe_eval_settings_and_a_bad_key(tmp_path: Path) -> None:
    from native_mm.apps.digits.recipe import RecipeError, eval_settings

    recipe = load_recipe(RECIPE)
    cfg, _ = eval_settings(recipe, max_items=7)
    assert cfg.max_items == 7
    assert cfg.temperature_media == recipe["eval"]["temperature_media"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  max_items: 150", "  max_itmes: 150", 1))
    with pytest.raises(RecipeError, match=r"bad\.yaml: eval: .*max_itmes"):
        eval_settings(load_recipe(bad))


def test_eval_sampling_settings_are_per_modality(monkeypatch: pytest.MonkeyPatch) -> None:
    from native_mm import generation
    from native_mm.apps.digits.evaluation import model_generator
    from native_mm.vocab import Vocab

    class Codes:  # encode(): text -> two piece ids, image -> a 4x4 grid of code 0
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def encode(self, media: object) -> np.ndarray:
            return np.array([3, 4]) if self.kind == "text" else np.zeros((4, 4), np.int64)

    class Set:
        vocab = Vocab(text_size=50, image_codes=16, audio_codes=8, audio_levels=2,
                      image_max_grid=8)  # fmt: skip

        def __getitem__(self, kind: str) -> Codes:
            return Codes(kind)

    seen: dict[str, generation.SamplingConfig] = {}
    monkeypatch.setattr(generation, "audio_frames_for", lambda seconds, toks: 50)
    monkeypatch.setattr(generation, "generate_ids", lambda m, p, v, out, samp, **k:
                        seen.setdefault(out.modality, samp) and [])  # fmt: skip
    cfg = EvalConfig(cfg_scale=2.0, cfg_scale_audio=1.5, temperature_media=0.8,
                     temperature_image=0.5, audio_max_seconds=1.0)  # fmt: skip
    from types import SimpleNamespace

    run = model_generator(SimpleNamespace(config=SimpleNamespace(block_size=256)), Set(), cfg)
    for direction in ("text->image", "text->audio"):
        run(direction, [Item([("text", "seven")], 7)])
    assert (seen["image"].cfg_scale, seen["image"].temperature) == (2.0, 0.5)
    assert (seen["audio"].cfg_scale, seen["audio"].temperature) == (1.5, 0.8)
    assert seen["image"].max_new_tokens == 4 * 4 + 4
    assert seen["audio"].max_new_tokens == 50 * 2 + 2


def test_corpus_audio_prompt_knobs(tmp_path: Path) -> None:
    small = SMALL | {"max_clips": 10, "max_images": 10, "image_augment": 0,
                     "docs": {"audio->text": 40, "text->audio": 20}}  # fmt: skip

    def audio(cfg: CorpusConfig, name: str) -> tuple[list[str], list[str]]:
        build_corpus(cfg, tmp_path / name)
        docs = [
            json.loads(x) for x in (tmp_path / name / "documents.jsonl").read_text().splitlines()
        ]
        prompts = [d["segments"][0]["audio"] for d in docs if "audio" in d["segments"][0]]
        targets = [d["segments"][1]["audio"] for d in docs if "audio" in d["segments"][1]]
        return prompts, targets

    prompts, _ = audio(CorpusConfig(**small, clean_prompts=1.0), "clean")
    assert prompts and all(p.endswith("_0.wav") for p in prompts)
    prompts, _ = audio(CorpusConfig(**small, clean_prompts=0.0), "copies")
    assert prompts and not any(p.endswith("_0.wav") for p in prompts)
    # the narrow augmentation of the first main jobs: copies everywhere, same lengths +-15%
    prompts, targets = audio(
        CorpusConfig(**small | {"audio_augment": 3}, audio_augment_kind="speed_gain"), "sg"
    )
    assert not all(t.endswith("_0.wav") for t in targets)
    for name in {p.rsplit("_", 1)[0] for p in prompts[:5]}:
        n0 = len(sf.read(tmp_path / "sg" / f"{name}_0.wav")[0])
        assert all(0.8 * n0 <= len(sf.read(tmp_path / "sg" / f"{name}_{k}.wav")[0]) <= 1.2 * n0
                   for k in (1, 2, 3))  # fmt: skip
    with pytest.raises(CorpusError, match="audio_augment_kind"):
        CorpusConfig(audio_augment_kind="heavy")
    with pytest.raises(CorpusError, match="clean_prompts"):
        CorpusConfig(clean_prompts=1.5)


def test_prompt_loss_per_kind(tmp_path: Path) -> None:
    """prompt_loss: a list keeps the loss on the prompts of those kinds only."""
    small = SMALL | {"max_clips": 10, "max_images": 10, "image_augment": 0,
                     "docs": {"audio->text": 20, "image->text": 20, "text->image": 20}}  # fmt: skip
    for loss, with_loss in ((True, {"text", "image", "audio"}), (False, set()),
                            (["image"], {"image"})):  # fmt: skip
        out = tmp_path / str(loss)
        build_corpus(CorpusConfig(**small, prompt_loss=loss), out)
        docs = [json.loads(x) for x in (out / "documents.jsonl").read_text().splitlines()]
        firsts = [d["segments"][0] for d in docs]
        kinds = {next(iter(k for k in f if k != "loss")) for f in firsts}
        assert kinds == {"text", "image", "audio"}
        for f in firsts:
            kind = next(iter(k for k in f if k != "loss"))
            assert f.get("loss", True) == (kind in with_loss), (loss, f)
    with pytest.raises(CorpusError, match="prompt_loss"):
        CorpusConfig(prompt_loss=["video"])


@pytest.mark.parametrize("name", ["digits.yaml", "digits_narrow.yaml"])
def test_pipeline_recipes_load_with_their_tokenizers(name: str) -> None:
    for smoke in (False, True):
        recipe = load_recipe(REPO / "recipes" / name, smoke=smoke)
        CorpusConfig(**recipe["corpus"])  # every corpus key is a field, every value valid
        for kind in ("image", "audio"):
            spec = recipe["tokenizers"][kind]
            assert (REPO / spec["spec"]).is_file()
            if spec.get("dir"):
                assert (REPO / spec["dir"] / "weights.pt").is_file()


def test_image_grid_is_sized_to_what_was_generated_and_titled() -> None:
    from PIL import Image

    from native_mm.apps.digits.evaluation import grid_title, image_grid

    row = {"n": 4, "accuracy": 0.25}
    title = grid_title("text->image", row, 3)
    assert title == ("text->image: 4 prompts, 25% judged right, model after 3 steps "
                     "(few steps: noise expected)")  # fmt: skip
    assert "noise" not in grid_title("text->image", row, 6000)
    tiles = [(d, Image.new("L", (16, 16), 200)) for d in (0, 1, 1, 7)] + [(5, None)]
    grid = image_grid(tiles, scale=4, title="")
    assert grid.size == (16 + 2 * 66, 3 * 66)  # digits 0, 1, 7; two columns; no title line
    titled = image_grid(tiles, scale=4, title=title)
    assert titled.size[1] == 14 + 3 * 66 and titled.size[0] > grid.size[0]
