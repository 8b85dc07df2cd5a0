"""Hooks for the ablation notebooks (``notebooks/``): one recipe run with overrides, its
metrics back, and the few measurements the notebooks share.

A notebook runs a family of recipes that differ in one knob. Everything here goes
through the package's own entry points -- :func:`fit_lm` writes a LightningCLI config
(a recipe deep-merged with overrides, exactly like ``native-mm run`` does for its fit
stage) and calls ``native-mm fit`` in-process; evaluation uses
:mod:`native_mm.apps.digits.evaluation`'s generators and judges -- so a notebook holds no training
code of its own.

    res = fit_lm("runs/ab/qk_off", sources=["runs/digits/shards"],
                 overrides={"model": {"arch": {"qk_norm": False}, "lr": 0.03}})
    steps, loss = res.series("train/loss")
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from native_mm.apps.digits.recipe import REPO, RecipeError, deep_merge
from native_mm.io import atomic_write, read_yaml

DEFAULT_RECIPE = REPO / "recipes" / "digits_lm.yaml"


# ---- metrics ------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSV log (``metrics.csv`` or a fit directory holding ``csv/``).

    Empty cells are dropped, so each row holds only what was logged at that step.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "csv" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics CSV (did the run log with run.logger csv?)")
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            rows.append({k: float(v) for k, v in raw.items() if v not in ("", None)})
    return rows


def series(rows: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the rows that logged it, in step order."""
    pts = sorted((int(r["step"]), r[key]) for r in rows if key in r and "step" in r)
    if not pts:
        return np.zeros(0, np.int64), np.zeros(0)
    s, v = zip(*pts, strict=True)
    return np.asarray(s, np.int64), np.asarray(v, np.float64)


def count_spikes(values: Sequence[float], window: int = 10, factor: float = 1.3) -> int:
    """Loss spikes: points above ``factor`` x the median of the ``window`` points before.

    A run of consecutive high points is one spike; a non-finite value counts as high.
    """
    v = np.asarray(values, np.float64)
    spikes, inside = 0, False
    for i in range(window, len(v)):
        prev = v[i - window : i]
        prev = prev[np.isfinite(prev)]
        ref = float(np.median(prev)) if prev.size else np.inf
        high = not np.isfinite(v[i]) or v[i] > factor * ref
        if high and not inside:
            spikes += 1
        inside = high
    return spikes


# ---- one fit ------------------------------------------------------------------------------
@dataclasses.dataclass
class FitResult:
    """What one :func:`fit_lm` run left behind."""

    out_dir: Path  # the run directory (lm_config.yaml, checkpoints/, csv/metrics.csv)
    checkpoint: Path | None  # checkpoints/last.ckpt, None if the run wrote none
    metrics: list[dict[str, float]]  # rows of csv/metrics.csv (see read_metrics)
    seconds: float  # wall time of the fit (of the original run when it was reused)
    error: str | None = None  # the NonFiniteError message when training diverged and stopped

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        return series(self.metrics, key)

    def last(self, key: str, n: int = 1) -> float:
        """Mean of the last ``n`` logged values of ``key`` (nan if never logged)."""
        _, v = self.series(key)
        return float(np.mean(v[-n:])) if len(v) else float("nan")


def _sources(paths: Sequence[Any] | None) -> list[dict] | None:
    if paths is None:
        return None
    out = []
    for p in paths:
        if isinstance(p, dict):
            out.append({"path": str(p["path"]), "weight": float(p.get("weight", 1.0))})
        else:
            out.append({"path": str(p), "weight": 1.0})
    return out


def lm_config(
    sources: Sequence[Any],
    out_dir: str | Path,
    overrides: dict | None = None,
    recipe: str | Path = DEFAULT_RECIPE,
    val_sources: Sequence[Any] | None = None,
    seed: int = 0,
    threads: int = 1,
) -> dict:
    """The resolved LightningCLI config: ``recipe`` <- overrides <- run dir, data, seed.

    Args:
        sources: shard directories, or ``{"path", "weight"}`` dicts (a mixture).
        out_dir: the run directory.
        overrides: nested dict merged over the recipe (``{"model": {"lr": 0.01}}``).
        recipe: a LightningCLI recipe YAML (default ``recipes/digits_lm.yaml``).
        val_sources: held-out shard directories; validation then runs every
            ``trainer.val_check_interval`` steps (set it in ``overrides``).
        seed: ``seed_everything`` and ``data.seed``.
        threads: torch threads of the fit (1 on a shared machine).
    """
    base = read_yaml(Path(recipe), RecipeError, "recipe")
    cfg = deep_merge(base, overrides or {})
    fixed: dict[str, Any] = {
        "seed_everything": seed,
        "run": {"out_dir": str(out_dir), "threads": int(threads), "logger": "csv"},
        "data": {"sources": _sources(sources), "seed": seed},
    }
    if val_sources:
        fixed["data"]["val_sources"] = _sources(val_sources)
    cfg = deep_merge(cfg, fixed)
    if not val_sources:
        cfg["data"]["val_sources"] = None
    return cfg


def fit_lm(
    out_dir: str | Path,
    sources: Sequence[Any],
    overrides: dict | None = None,
    recipe: str | Path = DEFAULT_RECIPE,
    val_sources: Sequence[Any] | None = None,
    seed: int = 0,
    threads: int = 1,
    init_from: str | Path | None = None,
    reuse: bool = True,
) -> FitResult:
    """Run ``native-mm fit`` on a recipe with overrides -> its checkpoint and metrics.

    Args:
        out_dir: the run directory; with ``reuse`` a finished run there (``done.json``)
            is returned without training again.
        sources, overrides, recipe, val_sources, seed, threads: see :func:`lm_config`.
        init_from: a ``last.ckpt`` to continue from (copied into the run directory and
            resumed: weights, optimizer, step and LR schedule carry on, the data mixture
            and any other override are the new ones -- e.g. a second training phase with
            ``trainer.max_steps`` = total steps of both phases).

    A run that stops with :class:`NonFiniteError` (diverged) is returned with ``error``
    set and the metrics logged until then.
    """
    import shutil

    from native_mm.training.cli import main as fit_main
    from native_mm.training.module import NonFiniteError

    out = Path(out_dir)
    done = out / "done.json"
    last = out / "checkpoints" / "last.ckpt"
    if reuse and done.is_file():
        info = json.loads(done.read_text())
        metrics = read_metrics(out) if (out / "csv" / "metrics.csv").is_file() else []
        seconds = float(info.get("seconds", 0.0))  # of the run that made it
        return FitResult(out, last if last.is_file() else None, metrics, seconds, info.get("error"))
    if out.exists():
        shutil.rmtree(out)  # a half-finished run: start it again from scratch
    out.mkdir(parents=True)
    cfg = lm_config(sources, out, overrides, recipe, val_sources, seed, threads)
    config_path = out / "lm_config.yaml"
    with atomic_write(config_path, "w") as f:
        f.write(yaml.safe_dump(cfg, sort_keys=False))
    argv = ["--config", str(config_path)]
    if init_from is not None:
        (out / "checkpoints").mkdir()
        init = out / "checkpoints" / "init.ckpt"
        shutil.copyfile(init_from, init)
        sha = Path(str(init_from) + ".sha256")
        if sha.is_file():
            shutil.copyfile(sha, str(init) + ".sha256")
        argv += ["--ckpt_path", str(init)]
    t0 = time.perf_counter()
    error = None
    try:
        fit_main(argv)
    except NonFiniteError as e:
        error = str(e)
    seconds = round(time.perf_counter() - t0, 1)
    with atomic_write(done, "w") as f:
        f.write(json.dumps({"seconds": seconds, "error": error}))
    logged = (out / "csv" / "metrics.csv").is_file()  # nothing logged if steps < log interval
    metrics = read_metrics(out) if logged else []
    return FitResult(out, last if last.is_file() else None, metrics, seconds, error)


# ---- shared data -------------------------------------------------------------------------
DATA_STAGES = ("corpus", "text", "image", "audio", "tokenizers", "shards")


def prepare_digits(
    out: str | Path, smoke: bool = False, overrides: dict | None = None,
    recipe: str | Path = REPO / "recipes" / "digits_narrow.yaml", log: Any = print,
    stages: tuple[str, ...] = DATA_STAGES,
) -> dict[str, Path]:  # fmt: skip
    """The main job's data stages (corpus -> tokenizers -> shards) into ``out``: by default
    the narrow recipe the ablation notebooks were measured with (runs J/K's corpus).

    Each stage is skipped when its output exists, so several notebooks share one build.
    ``smoke`` merges the recipe's ``smoke:`` block (a tiny corpus) but keeps the shipped
    image and audio tokenizers, so nothing is trained. Returns the pipeline's paths
    (``corpus``, ``tokenizers``, ``shards``, ...). ``stages`` may leave some out (e.g. the
    shards, when a notebook tokenizes the corpus itself with other settings).
    """
    from native_mm.apps.digits.pipeline import Pipeline, load_recipe

    r = load_recipe(recipe, smoke=smoke)
    if smoke:
        shipped = load_recipe(recipe)["tokenizers"]
        r["tokenizers"] = deep_merge(r["tokenizers"], {
            m: {"dir": shipped[m]["dir"], "spec": shipped[m]["spec"], "overrides": []}
            for m in ("image", "audio")
        })  # fmt: skip
    r = deep_merge(r, {"threads": 1, "tokenize": {"workers": 0}})
    r = deep_merge(r, overrides or {})
    p = Pipeline(r, out, log=log)
    p.run(tuple(st for st in DATA_STAGES if st in stages))
    return p.paths


def tokenize_documents(
    documents: str | Path, tokenizers: str | Path, out: str | Path,
    audio_levels: int | None = None,
) -> Path:  # fmt: skip
    """``native-mm tokenize`` of one documents file into ``out`` (skipped if it exists),
    audio as ``audio_levels`` RVQ levels a frame (None = all of the vocabulary's)."""
    from native_mm.layouts import AudioFrameMajor, Layout
    from native_mm.training.shards import tokenize

    out = Path(out)
    layout = None if audio_levels is None else Layout(audio=AudioFrameMajor(audio_levels))
    if not (out / "manifest.json").is_file():
        tokenize([documents], out, tokenizers, docs_per_shard=4096, workers=0,
                 layout=layout, log=lambda s: None)  # fmt: skip
    return out


def speech_subset(out: str | Path, train_voices: int, heldout_voices: int) -> Path:
    """A spoken-digits directory (``manifest.csv`` only, absolute paths) holding the first
    ``train_voices`` / ``heldout_voices`` voices of the committed clips: smoke runs of
    evaluations that read a whole manifest (e.g. ``tokenizers.audio_eval.evaluate``)."""
    from native_mm.apps.digits import speech

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keep = {"train": train_voices, "heldout": heldout_voices}
    voices: dict[str, list[str]] = {}
    rows = []
    for c in speech.read_manifest():
        vs = voices.setdefault(c.split, [])
        if c.voice not in vs and len(vs) < keep.get(c.split, 0):
            vs.append(c.voice)
        if c.voice in vs:
            rows.append(c)
    with atomic_write(out / "manifest.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["path", "digit", "voice", "split"])
        for c in rows:
            w.writerow([str(Path(c.path).resolve()), c.digit, c.voice, c.split])
    return out


# ---- a text-only corpus (forgetting) --------------------------------------------------------
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = (
    "{a} + {b} = {s}",
    "{wa} plus {wb} is {s}.",
    "after {wa} comes {wn}.",
    "count: {wa}, {wn}, {wnn}.",
    "{a} is {wa} and {b} is {wb}.",
)


def _sentence(r: random.Random) -> str:
    a, b = r.randrange(10), r.randrange(10)
    return r.choice(_TEMPLATES).format(
        a=a, b=b, s=a + b, wa=_WORDS[a], wb=_WORDS[b], wn=_WORDS[(a + 1) % 10],
        wnn=_WORDS[(a + 2) % 10],
    )  # fmt: skip


def write_text_documents(path: str | Path, n: int, seed: int = 0, sentences: int = 4) -> Path:
    """A text-only documents JSONL: ``n`` documents of ``sentences`` arithmetic/counting
    sentences about the digits ("3 + 4 = 7", "after three comes four.", ...).

    Different seeds give different documents of the same distribution (train vs held-out).
    The words are the digit captions' own, so the digits BPE covers them.
    """
    r = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        for i in range(n):
            text = " ".join(_sentence(r) for _ in range(sentences))
            f.write(json.dumps({"id": f"text:{seed}:{i}", "segments": [{"text": text}]}) + "\n")
    return path


# ---- conflicting prompts (modality competition) ---------------------------------------------
def conflict_items(n: int, image_size: int = 16, seed: int = 0) -> list[Any]:
    """``n`` prompts ``[text naming digit a] [held-out image of digit b != a]``.

    Returns :class:`native_mm.apps.digits.evaluation.Item` whose ``digit`` is the IMAGE's digit; the
    text's digit is in ``item.text_digit`` (an attribute set here).
    """
    from native_mm.apps.digits.corpus import IMAGE_CAPTIONS
    from native_mm.apps.digits.evaluation import Item, heldout_images
    from native_mm.apps.digits.wording import fill

    imgs, labels = heldout_images(image_size)
    rng = np.random.default_rng(seed)
    items = []
    for j in range(n):
        i = int(rng.integers(len(imgs)))
        b = int(labels[i])
        a = int((b + rng.integers(1, 10)) % 10)
        caption = fill(IMAGE_CAPTIONS[j % len(IMAGE_CAPTIONS)], a)
        it = Item([("text", caption), ("image", imgs[i])], b)
        it.text_digit = a  # type: ignore[attr-defined]
        items.append(it)
    return items


def follow_rates(pred: Sequence[int], items: Sequence[Any]) -> dict[str, float]:
    """Share of answers that show the image's digit, the text's digit, or neither."""
    pred = np.asarray(pred)
    img = np.array([it.digit for it in items])
    txt = np.array([it.text_digit for it in items])
    n = max(1, len(items))
    return {
        "follows_image": float((pred == img).sum() / n),
        "follows_text": float((pred == txt).sum() / n),
        "neither": float(((pred != img) & (pred != txt)).sum() / n),
    }


def competition_eval(
    checkpoint: str | Path, tokenizers_dir: str | Path, n: int = 100,
    cfg: Any = None, judges: Any = None, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Who wins when the text and the image disagree? -> rates and single-input controls.

    Generates audio (forced) after ``n`` :func:`conflict_items` prompts ``[text a][image b]``
    and after the eval's own ``text->audio`` and ``image->audio`` prompts (one input: the
    model's accuracy from the text alone / the image alone), all judged by the
    spoken-digit classifier of :mod:`native_mm.apps.digits.evaluation`.

    Returns ``follows_image``, ``follows_text``, ``neither`` (conflicts) and
    ``text_only_acc``, ``image_only_acc`` (controls).
    """
    from native_mm.apps.digits.evaluation import (
        EvalConfig,
        Judges,
        build_items,
        judge,
        model_generator,
    )
    from native_mm.checkpoint import load_checkpoint
    from native_mm.tokenizers.base import TokenizerSet

    cfg = cfg or EvalConfig(max_items=n, audio_max_seconds=1.2)
    tokenizers = TokenizerSet.load(tokenizers_dir)
    lm = load_checkpoint(checkpoint, tokenizers)
    judges = judges or Judges()
    run = model_generator(lm.model, tokenizers, cfg, lm.layout)
    items = conflict_items(n, cfg.image_size, seed=seed)
    out = follow_rates(judge(judges, "audio", run("text+image->audio", items)), items)
    controls = build_items(dataclasses.replace(cfg, max_items=n))
    for direction, key in (("text->audio", "text_only_acc"), ("image->audio", "image_only_acc")):
        its = controls[direction]
        pred = judge(judges, "audio", run(direction, its))
        out[key] = float(np.mean(pred == np.array([it.digit for it in its])))
    return out


def direction_accuracy(
    checkpoint: str | Path, tokenizers_dir: str | Path, direction: str, cfg: Any,
    judges: Any = None,
) -> dict[str, float]:  # fmt: skip
    """Held-out accuracy of one direction (e.g. ``"text->audio"``) -> accuracy, seconds.

    The prompts, generation and judging of ``native-mm eval``
    (:mod:`native_mm.apps.digits.evaluation`), for one direction only; ``cfg`` is its
    :class:`EvalConfig` (``max_items``, sampling, ...); the layout is the checkpoint's.
    """
    from native_mm.apps.digits.evaluation import Judges, build_items, judge, model_generator
    from native_mm.checkpoint import load_checkpoint
    from native_mm.tokenizers.base import TokenizerSet

    tokenizers = TokenizerSet.load(tokenizers_dir)
    lm = load_checkpoint(checkpoint, tokenizers)
    judges = judges or Judges()
    items = build_items(cfg)[direction]
    t0 = time.perf_counter()
    outputs = model_generator(lm.model, tokenizers, cfg, lm.layout)(direction, items)
    seconds = time.perf_counter() - t0
    pred = judge(judges, direction.split("->")[1], outputs)
    acc = float(np.mean(pred == np.array([it.digit for it in items])))
    return {"accuracy": acc, "n": len(items), "seconds": round(seconds, 1)}


# ---- notebook set-up ------------------------------------------------------------------------
def quiet(threads: int = 1) -> None:
    """Torch threads for a shared CPU; Lightning's info lines and known warnings silenced."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (creates its loggers, so their levels stick)
    import torch

    torch.set_num_threads(threads)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
