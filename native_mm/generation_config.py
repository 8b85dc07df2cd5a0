"""A model's own sampling settings (``generation_config.json``), so that a user's first
``native-mm generate`` samples as the model's evaluation did, not at temperature 1.

The training application writes it beside the checkpoints (the digits pipeline: its
recipe's tuned eval settings into ``lm/generation_config.json``); ``native-mm export``
copies it into the model directory; ``native-mm generate`` reads it for every option the
command line leaves out and says which settings it used and where they came from::

    {"text": {"temperature": 0.0},
     "image": {"temperature": 0.5, "cfg_scale": 4.0},
     "audio": {"temperature": 0.2, "cfg_scale": 2.0},
     "prompt_image_size": 16}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from native_mm.constraints import GenerationError

FILE = "generation_config.json"
KEYS = ("temperature", "top_k", "top_p", "cfg_scale")  # SamplingConfig fields it may set
MODALITIES = ("text", "image", "audio")


@dataclass
class GenerationDefaults:
    """Sampling settings per output modality, and the prompt images' side in pixels."""

    sampling: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_image_size: int | None = None

    def for_output(self, modality: str | None) -> dict[str, Any]:
        """The settings for a forced output ``modality`` (None: the model picks; text's
        settings without guidance, which needs a forced media output)."""
        settings = dict(self.sampling.get(modality or "text", {}))
        if modality is None:
            settings.pop("cfg_scale", None)
        return settings

    def settings(self, modality: str | None, given: dict[str, Any]) -> dict[str, Any]:
        """SamplingConfig fields: ``given`` over these defaults over temperature 1."""
        return {"temperature": 1.0, **self.for_output(modality), **given}

    def to_dict(self) -> dict:
        return {**self.sampling, "prompt_image_size": self.prompt_image_size}


def parse(raw: Any, where: str) -> GenerationDefaults:
    """A ``generation_config.json`` object -> defaults; any bad value names the file."""
    from native_mm.prompt_media import PromptMedia
    from native_mm.sampling import SamplingConfig

    if not isinstance(raw, dict):
        raise GenerationError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {*MODALITIES, "prompt_image_size"})
    if unknown:
        raise GenerationError(f"{where}: unknown keys {unknown}")
    sampling = {}
    for modality in MODALITIES:
        block = raw.get(modality) or {}
        bad = sorted(set(block) - set(KEYS)) if isinstance(block, dict) else [block]
        if bad:
            raise GenerationError(f"{where}: {modality}: unknown settings {bad}; have {KEYS}")
        try:
            SamplingConfig(**block)  # finite, in range
        except GenerationError as e:
            raise GenerationError(f"{where}: {modality}: {e}") from None
        sampling[modality] = dict(block)
    size = raw.get("prompt_image_size")
    try:
        PromptMedia(size)
    except GenerationError as e:
        raise GenerationError(f"{where}: prompt_{e}") from None
    return GenerationDefaults(sampling, size)


def load(path: str | Path) -> GenerationDefaults:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenerationError(f"{path}: cannot read the generation config ({e})") from None
    return parse(raw, str(path))


def find(ckpt: str | Path) -> Path | None:
    """The ``generation_config.json`` of a checkpoint: in a model directory, beside the
    file, or one level up (``lm/checkpoints/last.ckpt`` -> ``lm/``); None if there is none."""
    ckpt = Path(ckpt)
    base = ckpt if ckpt.is_dir() else ckpt.parent
    for candidate in (base / FILE, base.parent / FILE):
        if candidate.is_file():
            return candidate
    return None


def save(defaults: GenerationDefaults, directory: str | Path) -> Path:
    """Write ``directory/generation_config.json`` atomically (checked first)."""
    from native_mm.io import write_json

    parse(defaults.to_dict(), "generation config")
    path = Path(directory) / FILE
    write_json(path, defaults.to_dict())
    return path
