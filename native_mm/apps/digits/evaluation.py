"""Held-out evaluation of the digits model in all six directions (``native-mm eval``).

For each direction the model generates with the output modality forced, the output is
decoded through the tokenizers and judged by something that never saw the model:

    image->text, audio->text    the generated text is read: the first digit word or
                                numeral in it ("seven", "7") is the answer
    text->image, audio->image   :class:`native_mm.apps.digits.images.DigitJudge`, an SVM trained
                                on the ORIGINAL 8x8 train images (image -> 8x8 first)
    text->audio, image->audio   :class:`native_mm.apps.digits.audio_classifier.DigitClassifier`,
                                log-mel features + logistic regression trained on the
                                ORIGINAL clips of the training voices

Prompts come from the held-out split only: held-out writers' images and held-out voices'
clips; text prompts use the training wordings (text has no writers). Robustness rows
beside them ask with inputs the model never saw: the unseen synthesizer's clips and
unseen wordings (:func:`native_mm.apps.digits.prompts.robustness_items`). The judges' own
accuracy on original held-out and unseen media is reported next to the table.

Outputs in ``--out``: ``eval.json``, ``eval.md`` (the table), ``grid_text_to_image.png``
and ``grid_audio_to_image.png`` (a row per digit), ``wav/`` (a few generated clips). All
are written atomically (temporary file + rename); ``eval.json`` is written last, with its
sha256 in ``eval.json.sha256.json`` (:func:`read_result` checks it). A killed eval is run
again: nothing is generated incrementally, and it is seeded.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from native_mm import cli_help
from native_mm.apps.digits.corpus import DIRECTIONS
from native_mm.apps.digits.prompts import (
    Item,
    build_items,
    heldout_clips,
    heldout_images,
    robustness_items,
)
from native_mm.apps.digits.recipe import EvalConfig, eval_settings, load_recipe
from native_mm.apps.digits.wording import WORDS
from native_mm.vocab import EOS

_DIGIT_RE = re.compile(r"\b(" + "|".join(WORDS) + r")\b|(\d)", re.IGNORECASE)


def parse_digit(text: str) -> int:
    """The first digit word or numeral in ``text`` -> 0..9, or -1 when there is none."""
    m = _DIGIT_RE.search(text or "")
    if m is None:
        return -1
    return WORDS.index(m.group(1).lower()) if m.group(1) else int(m.group(2))


# ---- judges ------------------------------------------------------------------------------
class Judges:
    """The independent classifiers, trained on original train-split media only."""

    def __init__(self, audio_root: str | None = None) -> None:
        from native_mm.apps.digits import audio_classifier
        from native_mm.apps.digits import images as digits

        self.image = digits.DigitJudge()
        self.audio = audio_classifier.train_on_manifest(audio_root)
        self._digits = digits

    def image_labels(self, images: Sequence[Any]) -> np.ndarray:
        if not images:
            return np.zeros(0, np.int64)
        return self.image.predict(np.stack([self._digits.to_8x8(im) for im in images]))

    def audio_labels(self, waves: Sequence[Any]) -> np.ndarray:
        if not waves:
            return np.zeros(0, np.int64)
        return np.array(
            [self.audio.predict([w.samples.mean(axis=0)], w.sample_rate)[0] for w in waves]
        )

    def own_accuracy(self, cfg: EvalConfig, audio_root: str | None = None) -> dict[str, float]:
        """Each judge's accuracy on the ORIGINAL held-out media."""
        imgs, img_y = heldout_images(cfg.image_size)
        wavs, wav_y = heldout_clips(audio_root)
        own = {
            "image_judge_heldout": float((self.image_labels(imgs) == img_y).mean()),
            "audio_judge_heldout_voices": float((self.audio_labels(wavs) == wav_y).mean()),
        }
        unseen, unseen_y = heldout_clips(audio_root, "unseen_synth")
        if unseen:  # the synthesizer family kept out of training (the judge's too)
            own["audio_judge_unseen_synth"] = float((self.audio_labels(unseen) == unseen_y).mean())
        return own


def judge(judges: Judges, kind: str, outputs: Sequence[Any]) -> np.ndarray:
    """Decoded outputs of one kind -> predicted digits (-1 where nothing was produced)."""
    pred = np.full(len(outputs), -1, np.int64)
    ok = [i for i, o in enumerate(outputs) if o is not None]
    got = [outputs[i] for i in ok]
    if kind == "text":
        lab = np.array([parse_digit(t) for t in got], np.int64)
    elif kind == "image":
        lab = judges.image_labels(got)
    else:
        lab = judges.audio_labels(got)
    pred[ok] = lab
    return pred


# ---- generation --------------------------------------------------------------------------
def _pick(specific: float | None, shared: float | None) -> float | None:
    return shared if specific is None else specific


GenerateFn = Callable[[str, list[Item]], list[Any]]


def model_generator(model: Any, tokenizers: Any, cfg: EvalConfig, layout: Any = None,
                    stop_tokens: tuple[int, ...] = (EOS,)) -> GenerateFn:  # fmt: skip
    """A ``(direction, items) -> decoded outputs`` function over the real model, whose
    media ``layout`` (``load_checkpoint(...).layout``; None = the vocabulary's) it uses;
    ``stop_tokens``: ``<eos>``, or also a chat turn's ``<eot>``.

    Outputs are ``str`` / ``PIL.Image`` / ``Waveform``, or ``None`` when the row did not
    produce a span of the forced modality.
    """
    import torch

    from native_mm import generation as gen
    from native_mm.prompt_media import PromptMedia
    from native_mm.sequence import SequenceCodec

    vocab = tokenizers.vocab
    codec = SequenceCodec(vocab, layout)
    q = codec.audio_levels
    probe = tokenizers["image"].encode(heldout_images(cfg.image_size)[0][0])
    grid = tuple(int(s) for s in probe.shape)
    frame_rate = gen.audio_frames_for(1.0, tokenizers)
    max_frames = int(round(cfg.audio_max_seconds * frame_rate))

    media = PromptMedia(cfg.image_size)  # as the corpus' images were: squares of that side

    def encode_prompt(item: Item) -> np.ndarray:
        return gen.encode_prompt(item.prompt, tokenizers, codec.layout, media,
                                 model.config.block_size)  # fmt: skip

    def run(direction: str, items: list[Item]) -> list[Any]:
        dst = direction.split("->")[1]
        if dst == "text":
            out = gen.OutputSpec(modality="text", stop_tokens=stop_tokens)
            samp = gen.SamplingConfig(max_new_tokens=24, temperature=cfg.temperature_text,
                                      seed=cfg.seed)  # fmt: skip
        else:
            image = dst == "image"
            out = gen.OutputSpec(modality=dst, image_size=grid if image else None,
                                 stop_tokens=stop_tokens)  # fmt: skip
            samp = gen.SamplingConfig(
                max_new_tokens=grid[0] * grid[1] + 4 if image else max_frames * q + 2,
                temperature=_pick(getattr(cfg, f"temperature_{dst}"), cfg.temperature_media),
                top_k=cfg.top_k, seed=cfg.seed,
                cfg_scale=_pick(getattr(cfg, f"cfg_scale_{dst}"), cfg.cfg_scale),
            )  # fmt: skip
        results: list[Any] = []
        prompts = [encode_prompt(it) for it in items]
        for s in range(0, len(items), cfg.batch_size):
            rows = gen.generate_ids(model, prompts[s : s + cfg.batch_size], codec, out, samp)
            for row in rows:
                spans = [sp for sp in row.spans if sp.kind == dst]
                if dst == "text":
                    text = "".join(tokenizers["text"].decode(sp.codes) for sp in spans)
                    results.append(text)
                elif spans and spans[0].codes.size:
                    results.append(tokenizers[dst].decode(spans[0].codes))
                else:
                    results.append(None)
        return results

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return run


# ---- the table ----------------------------------------------------------------------------
def evaluate(
    generate_fn: GenerateFn,
    items: dict[str, list[Item]],
    judges: Judges,
    out: str | Path | None = None,
    cfg: EvalConfig | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Generate and judge every direction -> result dict (saved in ``out`` if given).

    ``extra`` (e.g. the judges' own accuracy) is merged into the result before saving.
    """
    cfg = cfg or EvalConfig()
    rows: dict[str, dict] = {}
    samples: dict[str, list[tuple[int, Any]]] = {}
    for direction, its in items.items():
        t0 = time.perf_counter()
        outputs = generate_fn(direction, its)
        dst = direction.split("->")[1]
        pred = judge(judges, dst, outputs)
        truth = np.array([it.digit for it in its])
        correct = int((pred == truth).sum())
        rows[direction] = {
            "accuracy": correct / max(1, len(its)),
            "correct": correct,
            "n": len(its),
            "no_output": int(sum(o is None or o == "" for o in outputs)),
            "seconds": round(time.perf_counter() - t0, 1),
            "confusion": _confusion(truth, pred).tolist(),
        }
        if any(it.wording for it in its):  # which wordings the model misreads
            by: dict[str, dict[str, int]] = {}
            for it, ok in zip(its, pred == truth, strict=True):
                row = by.setdefault(it.wording or "", {"correct": 0, "n": 0})
                row["correct"] += int(ok)
                row["n"] += 1
            rows[direction]["by_wording"] = by
        if dst == "text":
            rows[direction]["examples"] = [
                {"digit": int(t), "text": o} for t, o in list(zip(truth, outputs, strict=True))[:10]
            ]
        samples[direction] = [(int(t), o) for t, o in zip(truth, outputs, strict=True)]
        if progress:
            r = rows[direction]
            print(
                f"eval {direction:13s} acc {r['accuracy']:.3f} ({r['correct']}/{r['n']}) "
                f"{r['seconds']}s",
                flush=True,
            )
    result = {"directions": rows, "config": dataclasses.asdict(cfg), **(extra or {})}
    if out is not None:
        save_outputs(result, samples, Path(out), cfg)
    return result


def _confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(10, 11)`` counts: row = true digit, column = predicted digit, last = none."""
    m = np.zeros((10, 11), np.int64)
    for t, p in zip(truth, pred, strict=True):
        m[t, p if 0 <= p <= 9 else 10] += 1
    return m


def markdown_table(result: dict) -> str:
    """The accuracy table (and the judges' own accuracy) as markdown."""
    lines = ["| direction | held-out accuracy | n | judged by |", "| --- | --- | --- | --- |"]
    by = {"text": "reading the text", "image": "image digit SVM", "audio": "spoken-digit LR"}
    rows = result["directions"]
    for d in [d for d in DIRECTIONS if d in rows]:
        r = rows[d]
        lines.append(f"| {d} | {100 * r['accuracy']:.1f}% | {r['n']} | {by[d.split('->')[1]]} |")
    rob = result.get("robustness") or {}
    if rob:
        lines += ["", "| prompts the model never saw | direction | accuracy | n | held-out row |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for group, group_rows in rob.items():
        for d, r in group_rows.items():
            ref = f"{100 * rows[d]['accuracy']:.1f}%" if d in rows else "-"
            lines.append(f"| {group} | {d} | {100 * r['accuracy']:.1f}% | {r['n']} | {ref} |")
    own = result.get("judges")
    if own:
        lines.append("")
        lines.append("| judge on ORIGINAL media (held-out / unseen) | accuracy |")
        lines.append("| --- | --- |")
        for k, v in own.items():
            lines.append(f"| {k} | {100 * v:.1f}% |")
    return "\n".join(lines) + "\n"


FEW_STEPS = 100  # a model trained for fewer steps draws noise: its grids say so


def grid_title(direction: str, row: dict, steps: int | None) -> str:
    """``text->image: 4 prompts, 25% judged right, model after 3 steps (noise expected)``."""
    title = f"{direction}: {row['n']} prompts, {row['accuracy']:.0%} judged right"
    if steps is not None:
        title += f", model after {steps} steps"
        if steps < FEW_STEPS:
            title += " (few steps: noise expected)"
    return title


def image_grid(
    samples: list[tuple[int, Any]], per_digit: int = 10, scale: int = 4, title: str = ""
) -> Any:
    """A row per digit that has images (labelled), as many columns as its longest row (at
    most ``per_digit``), under a ``title`` line: sized to what was generated."""
    from PIL import Image, ImageDraw

    by: dict[int, list[Any]] = {}
    for d, im in samples:
        if im is not None and len(by.setdefault(d, [])) < per_digit:
            by[d].append(im.convert("L"))
    side = max((im.size[0] for v in by.values() for im in v), default=16) * scale
    cols, label, head = max((len(v) for v in by.values()), default=0), 16, 14 if title else 0
    draw_text = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(label + cols * (side + 2), int(draw_text.textlength(title)) + 4)
    grid = Image.new("L", (width, head + max(1, len(by)) * (side + 2)), 64)
    draw = ImageDraw.Draw(grid)
    draw.text((2, 1), title, fill=255)
    for r, d in enumerate(sorted(by)):
        top = head + r * (side + 2)
        draw.text((4, top + side // 2 - 5), str(d), fill=255)
        for j, im in enumerate(by[d]):
            big = im.resize((side, side), Image.Resampling.NEAREST)
            grid.paste(big, (label + j * (side + 2), top))
    return grid


def save_outputs(
    result: dict, samples: dict[str, list[tuple[int, Any]]], out: Path, cfg: EvalConfig
) -> None:
    """eval.json, eval.md, image grids and a few WAVs, each written atomically.

    ``eval.json`` comes last and carries a checksum (``eval.json.sha256.json``): it marks
    the whole output as done (the pipeline skips eval when it reads back intact).
    """
    from native_mm.io import atomic_write, save_image, write_json, write_wav

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for d in ("text->image", "audio->image"):
        if samples.get(d):
            name = f"grid_{d.replace('->', '_to_')}.png"
            title = grid_title(d, result["directions"][d], result.get("steps"))
            save_image(out / name, image_grid(samples[d], title=title))
            files.append(name)
    (out / "wav").mkdir(exist_ok=True)
    for d in ("text->audio", "image->audio"):
        count = {k: 0 for k in range(10)}
        for digit, wav in samples.get(d, []):
            if wav is not None and count[digit] < cfg.n_wavs:
                name = f"wav/{d.replace('->', '_to_')}_{WORDS[digit]}_{count[digit]}.wav"
                write_wav(out / name, wav.samples.mean(axis=0), wav.sample_rate)
                files.append(name)
                count[digit] += 1
    result["files"] = files
    with atomic_write(out / "eval.md", "w") as f:
        f.write(markdown_table(result))
    write_json(out / "eval.json", result, checksum=True)


def read_result(path: str | Path) -> dict:
    """Read ``eval.json`` (or ``DIR/eval.json``), checked against its checksum file.

    Raises:
        ValueError: missing, not JSON, or not the bytes that were written (names the file).
    """
    from native_mm.io import read_json

    result, file = read_json(path, "eval.json", what="evaluation result", verify=True,
                             hint=" (native-mm eval writes it)")  # fmt: skip
    if not isinstance(result, dict) or not isinstance(result.get("directions"), dict):
        raise ValueError(f"{file}: not an evaluation result (no 'directions')")
    return result


def main(argv: list[str] | None = None, prog: str = "native-mm eval") -> int:
    """``native-mm eval --ckpt CKPT --tokenizers DIR --out DIR [options]``."""
    from native_mm.generate_cli import add_device_options

    p = cli_help.parser(prog, __doc__)
    p.add_argument("--ckpt", required=True, help="a model directory (native-mm export), a "
                   "run directory or a checkpoint (.ckpt from fit)")  # fmt: skip
    p.add_argument("--tokenizers", help="tokenizer set directory (default: the model's own "
                   "tokenizers/, or the run's)")  # fmt: skip
    add_device_options(p)
    p.add_argument("--out", required=True, help="directory for eval.json/md, grids, WAVs")
    p.add_argument("--audio-root", default=None, help="spoken digits dir (default: committed)")
    p.add_argument("--config", default=None,
                   help="run recipe (e.g. recipes/digits.yaml) whose eval settings are the "
                        "defaults; the flags below override them")  # fmt: skip
    helps = cli_help.field_help(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = float if "float" in str(f.type) else int
        text = f"{helps[f.name]} (default: {f.default}; with --config, the recipe's)"
        p.add_argument(flag, type=kind, default=None, help=text.replace("%", "%%"))
    args = p.parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EvalConfig)
        if getattr(args, f.name) is not None
    }
    audio_root = args.audio_root
    if args.config:
        cfg, recipe_root = eval_settings(load_recipe(args.config), **overrides)
        audio_root = audio_root or recipe_root
    else:
        cfg = EvalConfig(**overrides)
    result = evaluate_checkpoint(args.ckpt, args.tokenizers, args.out, cfg, audio_root,
                                 device=args.device, dtype=args.dtype)  # fmt: skip
    print(markdown_table(result))
    print(f"saved to {args.out}/eval.json ({result['seconds']}s)", file=sys.stderr)
    return 0


def _make_out_dir(out: str | Path) -> None:
    from native_mm.io import remove_temp_files

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out exists and is not a directory")
    try:
        (out / "wav").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot create the output directory ({e.strerror})") from None
    remove_temp_files(out, out / "wav")  # half-written files of a killed eval


def evaluate_checkpoint(
    ckpt: str | Path, tokenizers_dir: str | Path | None, out: str | Path, cfg: EvalConfig,
    audio_root: str | None = None, progress: bool = True, device: str = "cpu",
    dtype: str | None = None, judges: Judges | None = None,
) -> dict:  # fmt: skip
    """Load the checkpoint (or model / run directory) and tokenizers (None: its own),
    evaluate every direction, save into ``out``."""
    import torch

    from native_mm.pretrained import load
    from native_mm.release import find_checkpoint

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Everything a user can get wrong is checked before the minutes of generation:
    # the output directory, the tokenizer set, the checkpoint and their match.
    _make_out_dir(out)
    # with the layout the model was trained on
    lm, tokenizers = load(find_checkpoint(ckpt), tokenizers_dir, device, dtype)
    judges = judges or Judges(audio_root)  # (a caller evaluating many models shares them)
    own = judges.own_accuracy(cfg, audio_root)
    if progress:
        print(
            "eval judges on original held-out media: "
            + ", ".join(f"{k} {v:.3f}" for k, v in own.items()),
            flush=True,
        )
    items = build_items(cfg, audio_root)
    gen_fn = model_generator(lm.model, tokenizers, cfg, lm.layout)
    robustness = {}  # prompts from outside the training distribution (prompts.py)
    for group, its in robustness_items(cfg, audio_root).items():
        if progress:
            print(f"eval robustness: {group}", flush=True)
        robustness[group] = evaluate(gen_fn, its, judges, cfg=cfg, progress=progress)["directions"]
    extra = {"judges": own, "robustness": robustness, "checkpoint": str(ckpt), "steps": lm.steps,
             "tokenizers": str(tokenizers_dir), "layout": lm.layout.to_dict()}  # fmt: skip
    result = evaluate(gen_fn, items, judges, out=out, cfg=cfg, progress=progress, extra=extra)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
