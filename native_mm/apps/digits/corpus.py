"""The built-in interleaved digits corpus: written, drawn and spoken digits in one JSONL.

Real data only, all of it installed with the package:

- images: scikit-learn's handwritten digits (:mod:`native_mm.apps.digits.images`), TRAIN split
  only (the held-out writers' images are never written here), upscaled to
  ``image_size`` and optionally augmented with small random affine warps;
- audio: the committed spoken digits (:mod:`native_mm.apps.digits.speech`: espeak-ng,
  festival and Piper voices), TRAIN voices only, optionally augmented with speaker, room,
  channel, noise and silence perturbations (:mod:`native_mm.apps.digits.augment`): the
  augmented copies appear only as prompts (audio->X), generated speech stays clean;
- text: captions and prompts with varied wording ("a handwritten seven", "the digit 7",
  "seven", "7", "draw a 7", "say seven", ...).

Each document is one *direction* (text->image, image->text, text->audio, audio->text,
image->audio, audio->image) or a *mixed* document holding all three modalities of the
same digit in a random order. :func:`build_corpus` writes ``documents.jsonl`` (schema of
:mod:`native_mm.documents`), the media files it references (paths relative to it) and
``corpus.json`` (config, counts, seconds); it is deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np

from native_mm.apps.digits.augment import augment_audio, augment_image, speed_gain
from native_mm.apps.digits.wording import fill, free_prompt

DIRECTIONS: tuple[str, ...] = (
    "text->image",
    "image->text",
    "text->audio",
    "audio->text",
    "image->audio",
    "audio->image",
)

# Captions that name the digit of an image / a clip (targets of X->text, prompts too).
IMAGE_CAPTIONS = (
    "{w}", "{d}", "a handwritten {w}", "the digit {d}", "the digit {w}", "this is a {w}.",
    "the image shows a {w}", "a handwritten {d}", "it is a {w}", "{W}.",
)  # fmt: skip
AUDIO_CAPTIONS = (
    "{w}", "{d}", "someone says {w}", "the voice says {w}", "a spoken {w}", "the digit {d}",
    "it is a {w}", "{W}.", "the word {w}", "a spoken {d}",
)  # fmt: skip
# Prompts that ask for an image / a clip of a digit (text->image, text->audio).
IMAGE_PROMPTS = (
    "draw a {w}", "draw a {d}", "a handwritten {w}", "the digit {d}", "{w}", "{d}",
    "write the digit {d}", "write a {w}", "the digit {w}", "a handwritten {d}",
)  # fmt: skip
AUDIO_PROMPTS = (
    "say {w}", "say {d}", "{w}", "{d}", "someone says {w}", "a spoken {w}", "say the digit {d}",
    "pronounce {w}", "the spoken digit {d}", "speak: {w}",
)  # fmt: skip
QUESTIONS = ("what digit is this?", "which digit?", "what number is it?")


class CorpusError(ValueError):
    """A corpus configuration or source that cannot be used; names the field or file."""


MODALITY_KINDS = ("text", "image", "audio")


@dataclasses.dataclass
class CorpusConfig:
    """What goes into the built-in digits corpus."""

    seed: int = 0  # every random choice (pairings, wordings, augmentations) follows it
    image_size: int = 16  # side of the written PNGs (the image tokenizer's input size)
    image_augment: int = 2  # augmented copies per train image (0 = originals only)
    audio_augment: int = 3  # augmented copies per train clip (0 = originals only)
    docs: dict = dataclasses.field(  # documents per direction (plus "mixed")
        default_factory=lambda: {d: 2000 for d in DIRECTIONS} | {"mixed": 600}
    )
    question_rate: float = 0.2  # share of X->text documents whose answer follows a question
    prompt_loss: bool | list = True  # loss on the prompts of direction docs: all (True),
    #   none (False) or those of the listed kinds (e.g. ["image"]); the rest get "loss": false
    free_wording: float = 0.5  # share of text->X prompts in free wording (wording.py)
    audio_augment_kind: str = "recorded"  # "recorded" (augment.py: rooms, noise, telephone,
    #   ...; copies only in prompts) or "speed_gain" (speed and level; copies everywhere)
    clean_prompts: float = 0.5  # "recorded": share of audio prompts drawn from the originals
    max_images: int = 0  # use at most this many train images (0 = all; smoke runs)
    max_clips: int = 0  # use at most this many train clips (0 = all; smoke runs)
    audio_root: str = ""  # spoken-digits directory ("" = the committed clips)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.docs) - set(DIRECTIONS) - {"mixed"})
        if unknown:
            raise CorpusError(f"corpus.docs: unknown directions {unknown}; have {DIRECTIONS}")
        for k, v in self.docs.items():
            if int(v) < 0:
                raise CorpusError(f"corpus.docs[{k!r}] = {v}: must be >= 0")
        if self.audio_augment_kind not in ("recorded", "speed_gain"):
            raise CorpusError(f"corpus.audio_augment_kind = {self.audio_augment_kind!r}: "
                              "must be 'recorded' or 'speed_gain'")  # fmt: skip
        if not 0.0 <= self.clean_prompts <= 1.0:
            raise CorpusError(f"corpus.clean_prompts = {self.clean_prompts}: must be in [0, 1]")
        if not 0.0 <= self.free_wording <= 1.0:
            raise CorpusError(f"corpus.free_wording = {self.free_wording}: must be in [0, 1]")
        if not 0.0 <= self.question_rate <= 1.0:
            raise CorpusError(f"corpus.question_rate = {self.question_rate}: must be in [0, 1]")
        kinds = self.prompt_loss if isinstance(self.prompt_loss, list) else []
        if not isinstance(self.prompt_loss, (bool, list)) or set(kinds) - set(MODALITY_KINDS):
            raise CorpusError(f"corpus.prompt_loss = {self.prompt_loss!r}: true, false or a "
                              f"list of {MODALITY_KINDS}")  # fmt: skip
        if self.image_size < 8:
            raise CorpusError(f"corpus.image_size = {self.image_size}: must be >= 8")


def _image_pool(cfg: CorpusConfig, root: Path, rng: np.random.Generator) -> dict[int, list[str]]:
    """Write train images (+ augmented copies) -> {digit: [relative paths]}."""
    from native_mm.apps.digits import images as digits

    x, y = digits.load("train")
    if cfg.max_images:
        x, y = x[: cfg.max_images], y[: cfg.max_images]
    pool: dict[int, list[str]] = {d: [] for d in range(10)}
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, (img8, label) in enumerate(zip(x, y, strict=True)):
        base = digits.to_pil(img8, cfg.image_size)
        for k in range(cfg.image_augment + 1):
            img = base if k == 0 else augment_image(base, rng)
            rel = f"images/train{i:04d}_{k}.png"
            img.save(root / rel)
            pool[int(label)].append(rel)
    return pool


def _audio_pools(cfg: CorpusConfig, root: Path, rng: np.random.Generator) -> dict[str, dict]:
    """Write train clips (+ augmented copies) -> ``{"audio": all, "audio_clean": originals,
    "audio_copies": copies (the originals when there are none)}``, each {digit: [paths]}."""
    import soundfile as sf

    from native_mm.apps.digits import speech

    clips = speech.read_manifest(cfg.audio_root or speech.DEFAULT_DIR, split="train")
    if not clips:
        raise CorpusError(f"{cfg.audio_root or speech.DEFAULT_DIR}: no train clips")
    if cfg.max_clips:
        clips = clips[: cfg.max_clips]
    pool: dict[int, list[str]] = {d: [] for d in range(10)}
    originals: dict[int, list[str]] = {d: [] for d in range(10)}
    copies: dict[int, list[str]] = {d: [] for d in range(10)}
    (root / "audio").mkdir(parents=True, exist_ok=True)
    augment = augment_audio if cfg.audio_augment_kind == "recorded" else speed_gain
    for clip in clips:
        x, sr = sf.read(clip.path, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        stem = clip.path.stem.replace("+", "_")
        for k in range(cfg.audio_augment + 1):
            y = x if k == 0 else augment(x, sr, rng)
            rel = f"audio/{stem}_{k}.wav"
            sf.write(root / rel, y, sr, subtype="PCM_16")
            pool[clip.digit].append(rel)
            (copies if k else originals)[clip.digit].append(rel)
    copies = {d: v or originals[d] for d, v in copies.items()}
    return {"audio": pool, "audio_clean": originals, "audio_copies": copies}


def _segments(
    direction: str, digit: int, pools: dict[str, dict[int, list[str]]], r: random.Random,
    cfg: CorpusConfig,
) -> list[dict]:  # fmt: skip
    """The JSONL segments of one document of ``direction`` about ``digit``."""

    def media(kind: str, target: bool = False) -> dict:
        # Speech the model generates stays clean: recorded conditions only in prompts,
        # where ``clean_prompts`` of them are originals.
        if kind == "audio" and cfg.audio_augment_kind == "recorded":
            clean = target or r.random() < cfg.clean_prompts
            return {kind: r.choice(pools["audio_clean" if clean else "audio_copies"][digit])}
        return {kind: r.choice(pools[kind][digit])}

    def answer(captions: tuple[str, ...]) -> dict:
        text = fill(r.choice(captions), digit)
        if r.random() < cfg.question_rate:
            text = f"{r.choice(QUESTIONS)} {text}"
        return {"text": text}

    if direction == "mixed":
        kinds = ["text", "image", "audio"]
        r.shuffle(kinds)
        out = []
        for kind in kinds:
            if kind == "text":
                out.append({"text": fill(r.choice(IMAGE_CAPTIONS + AUDIO_CAPTIONS), digit)})
            else:
                out.append(media(kind, target=True))
        return out
    src, dst = direction.split("->")
    if src == "text":
        prompts = IMAGE_PROMPTS if dst == "image" else AUDIO_PROMPTS
        free = cfg.free_wording > 0 and r.random() < cfg.free_wording
        first = {"text": free_prompt(dst, digit, r) if free else fill(r.choice(prompts), digit)}
    else:
        first = media(src)
    kind = next(iter(first.keys() - {"loss"}))
    loss = cfg.prompt_loss
    if not (loss is True or (isinstance(loss, list) and kind in loss)):
        first["loss"] = False
    second = (
        answer(IMAGE_CAPTIONS if src == "image" else AUDIO_CAPTIONS)
        if dst == "text"
        else media(dst, target=True)
    )
    return [first, second]


def build_corpus(cfg: CorpusConfig, out: str | Path, progress: bool = False) -> dict:
    """Write the corpus into ``out`` -> summary dict (also saved as ``out/corpus.json``).

    Files: ``out/documents.jsonl``, ``out/images/*.png``, ``out/audio/*.wav``.
    """
    from native_mm.io import atomic_write, write_json

    t0 = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    pools = {"image": _image_pool(cfg, root, rng), **_audio_pools(cfg, root, rng)}
    r = random.Random(cfg.seed)
    docs = []
    for direction, count in sorted(cfg.docs.items()):
        for j in range(int(count)):
            digit = j % 10  # balanced over the digits
            segs = _segments(direction, digit, pools, r, cfg)
            docs.append({"id": f"{direction}:{j}", "segments": segs})
    r.shuffle(docs)
    with atomic_write(root / "documents.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    summary = {
        "config": dataclasses.asdict(cfg),
        "documents": len(docs),
        "per_direction": {k: int(v) for k, v in sorted(cfg.docs.items())},
        "images": sum(len(v) for v in pools["image"].values()),
        "clips": sum(len(v) for v in pools["audio"].values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(root / "corpus.json", summary)
    if progress:
        print(
            f"corpus: {summary['documents']} documents, {summary['images']} images, "
            f"{summary['clips']} clips -> {root} ({summary['seconds']}s)",
            flush=True,
        )
    return summary
