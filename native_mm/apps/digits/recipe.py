"""The digits recipe (``recipes/digits.yaml``): reading it, its smoke block, its typed
``eval:`` block and the paths it names. Shared by the pipeline and ``native-mm eval``."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from native_mm import resources
from native_mm.constraints import number_problem
from native_mm.io import read_yaml
from native_mm.sampling import MAX_CFG_SCALE, MAX_TEMPERATURE

REPO = resources.root()  # the clone, or the installed package data: recipes/, tokenizers/


@dataclasses.dataclass
class EvalConfig:
    """How the held-out evaluation generates and judges."""

    max_items: int = 200  # prompts per direction at most (held-out media are cycled/cut)
    robustness_items: int = 200  # prompts per robustness row (unseen synth, wording; 0 = none)
    batch_size: int = 50  # prompts generated together
    image_size: int = 16  # prompt images' side, pixels (the corpus' image_size)
    audio_max_seconds: float = 1.2  # longest audio the model may generate, seconds
    temperature_text: float = 0.0  # X->text sampling temperature (0 = greedy)
    temperature_media: float = 0.8  # image / audio sampling temperature
    top_k: int | None = None  # top-k for media sampling (None = all)
    cfg_scale: float | None = None  # classifier-free guidance for media (None = off)
    cfg_scale_image: float | None = None  # overrides cfg_scale for images
    cfg_scale_audio: float | None = None  # overrides cfg_scale for audio
    temperature_image: float | None = None  # overrides temperature_media for images
    temperature_audio: float | None = None  # overrides temperature_media for audio
    seed: int = 0  # sampling seed
    n_wavs: int = 2  # generated WAVs saved per digit (text->audio)
    threads: int = 0  # torch threads (0 = leave torch's default)

    def __post_init__(self) -> None:
        """Each option a finite number in its range, or a RecipeError naming the option."""
        for name, (low, high, integer) in EVAL_RANGES.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            problem = number_problem(value, low, high, integer, low_open=name in OPEN_LOW)
            if problem:
                flag = "--" + name.replace("_", "-")
                raise RecipeError(f"eval option {name} ({flag}) {problem}, got {value!r}")


# EvalConfig's ranges: (low, high, whole number). OPTIONAL ones may be None (off).
EVAL_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "max_items": (1, None, True), "robustness_items": (0, None, True),
    "batch_size": (1, 4096, True), "image_size": (1, 4096, True),
    "audio_max_seconds": (0, 3600, False), "temperature_text": (0, MAX_TEMPERATURE, False),
    "temperature_media": (0, MAX_TEMPERATURE, False), "top_k": (1, None, True),
    "cfg_scale": (0, MAX_CFG_SCALE, False), "cfg_scale_image": (0, MAX_CFG_SCALE, False),
    "cfg_scale_audio": (0, MAX_CFG_SCALE, False),
    "temperature_image": (0, MAX_TEMPERATURE, False),
    "temperature_audio": (0, MAX_TEMPERATURE, False), "seed": (0, 2**63 - 1, True),
    "n_wavs": (0, 1000, True), "threads": (0, 1024, True),
}  # fmt: skip
OPTIONAL = {"top_k", "cfg_scale", "cfg_scale_image", "cfg_scale_audio", "temperature_image",
            "temperature_audio"}  # fmt: skip
OPEN_LOW = {"audio_max_seconds"}


class RecipeError(ValueError):
    """A pipeline recipe that cannot be run; the message names the file and key."""


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested dicts merged, the rest replaced)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


RUN_KEYS = {"out", "seed", "threads", "corpus", "tokenizers", "tokenize", "fit", "eval"}


def load_recipe(path: str | Path, smoke: bool = False, known: set[str] = RUN_KEYS) -> dict:
    """Read a recipe (``known``: its top-level keys; the main job's by default); with
    ``smoke`` its ``smoke:`` block is merged over it."""
    path = Path(path)
    raw = read_yaml(path, RecipeError, "recipe")
    smoke_block = raw.pop("smoke", {}) or {}
    if smoke:
        raw = deep_merge(raw, smoke_block)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"{path}: unknown recipe keys {unknown}; have {sorted(known)}")
    raw["_path"] = str(path)
    return raw


def eval_settings(recipe: dict, **overrides: Any) -> tuple[EvalConfig, str | None]:
    """The recipe's ``eval:`` block (+ its corpus' image size, seed, threads)
    with ``overrides`` on top -> (EvalConfig, audio_root of the corpus or None)."""
    block = dict(recipe.get("eval", {}))
    block.setdefault("image_size", recipe.get("corpus", {}).get("image_size", 16))
    block.setdefault("threads", int(recipe.get("threads", 0)))
    block.setdefault("seed", int(recipe.get("seed", 0)))
    try:
        cfg = EvalConfig(**{**block, **overrides})
    except TypeError as e:  # an unknown key in the eval: block
        raise RecipeError(f"{recipe.get('_path', 'recipe')}: eval: {e}") from None
    return cfg, recipe.get("corpus", {}).get("audio_root") or None


def resolve(p: str | Path, recipe_path: str | Path) -> Path:
    """A path from a recipe: as given if it exists (or is absolute), else under the repo."""
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    for base in (Path(recipe_path).resolve().parent.parent, REPO):
        if (base / p).exists():
            return base / p
    return p


def generation_defaults(cfg: EvalConfig) -> Any:
    """The eval's tuned sampling as the model's ``generation_config.json``: what a user's
    ``native-mm generate`` uses when no flag says otherwise."""
    from native_mm.generation_config import GenerationDefaults

    def media(kind: str) -> dict:
        temperature = getattr(cfg, f"temperature_{kind}")
        scale = getattr(cfg, f"cfg_scale_{kind}")
        out = {
            "temperature": cfg.temperature_media if temperature is None else temperature,
            "top_k": cfg.top_k,
            "cfg_scale": cfg.cfg_scale if scale is None else scale,
        }
        return {k: v for k, v in out.items() if v is not None}

    sampling = {"text": {"temperature": cfg.temperature_text}, "image": media("image"),
                "audio": media("audio")}  # fmt: skip
    return GenerationDefaults(sampling, cfg.image_size)
