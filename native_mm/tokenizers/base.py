"""The one tokenizer interface that text, image and audio tokenizers implement.

A tokenizer maps media to *local* integer codes and back; the shared vocabulary
(``native_mm.vocab``) adds each modality's offset. Local code shapes:

    text   (N,)        sentencepiece piece ids in [0, codebook_size)
    image  (h, w)      VQ codes in raster order, grid shape carried by the array
    audio  (Q, T)      RVQ codes: Q levels x T frames, each in [0, codebook_size)

Tokenizers know the vocabulary, never the model, training or generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from native_mm.io import atomic_write, load_torch, save_torch, write_json
from native_mm.vocab import Vocab, VocabError, check_fingerprints, load_manifest, manifest_digest

CODE_VECTORS = "code_vectors.npz"  # written beside manifest.json by TokenizerSet.save

# Configs store names, not classes: modality -> "module:Class".
TOKENIZER_CLASSES: dict[str, str] = {
    "text": "native_mm.tokenizers.text:TextTokenizer",
    "image": "native_mm.tokenizers.image:ImageTokenizer",
    "audio": "native_mm.tokenizers.audio:AudioTokenizer",
}
MODALITY_ORDER = ("text", "image", "audio")


class MediaError(ValueError):
    """Media that cannot be read or tokenized; the message names the file."""


class MediaTooLong(MediaError):
    """Readable media over a configured limit (audio longer than ``max_seconds``): skipped
    and counted under this name, like any :class:`MediaError`, but not a corrupt file."""


class Tokenizer(ABC):
    """Encode media -> local codes, decode codes -> media, save/load, fingerprint."""

    modality: ClassVar[str]

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes per level."""

    @property
    def n_levels(self) -> int:
        """Number of code levels (RVQ depth for audio, 1 otherwise)."""
        return 1

    @property
    def frame_rate(self) -> float | None:
        """Code frames per second of media that unfold in time (audio); None otherwise.
        Generation turns a requested duration into a number of frames with it."""
        return None

    @abstractmethod
    def encode(self, media: Any) -> np.ndarray:
        """Media (or a path to it) -> int64 local codes (shape: see module docstring)."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> Any:
        """Local codes -> media (``str``, ``PIL.Image.Image`` or :class:`Waveform`)."""

    def code_vectors(self) -> np.ndarray | None:
        """``(n_levels, codebook_size, d)`` float32: the latent vector each code stands for
        (what the decoder reads), or None when codes have no geometry (text pieces)."""
        return None

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 of what determines the codes (model file / config + weights)."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write everything needed by :meth:`load` into ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Rebuild a tokenizer saved with :meth:`save`."""


@dataclasses.dataclass
class Waveform:
    """Decoded audio: ``samples`` is float32 ``(C, N)`` in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def fingerprint_tensors(config: dict, state_dict: dict) -> str:
    """Stable sha256 over a config and a state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.is_floating_point():
            t = t.float()  # numpy has no bfloat16; fp32 holds every float dtype exactly
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class TorchTokenizer(Tokenizer):
    """Shared save/load/fingerprint for tokenizers built on a torch ``model``.

    Subclasses set ``config_class`` (a dataclass) and build ``self.model`` from a config
    in ``__init__(config)``. Files: ``config.json`` and ``weights.pt`` (loaded with
    ``weights_only=True``), checked against the sha256 recorded in ``config.json``.
    """

    config_class: ClassVar[type]
    model: Any

    def __init__(self, config: Any) -> None:
        self.config = config

    def fingerprint(self) -> str:
        return fingerprint_tensors(dataclasses.asdict(self.config), self.model.state_dict())

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        sha = save_torch(directory / "weights.pt", self.model.state_dict())
        write_json(
            directory / "config.json",
            {
                "modality": self.modality,
                "config": dataclasses.asdict(self.config),
                "weights_sha256": sha,
                "fingerprint": self.fingerprint(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> TorchTokenizer:
        directory = Path(directory)
        meta_path = directory / "config.json"
        try:
            meta = json.loads(meta_path.read_text())
            modality = meta.get("modality") if isinstance(meta, dict) else None
            if modality != cls.modality:  # before the config: another kind's keys differ
                raise MediaError(
                    f"{meta_path}: holds a {modality!r} tokenizer, not {cls.modality!r}"
                )
            config = cls.config_class(**meta["config"])
        except FileNotFoundError:
            raise MediaError(f"{meta_path}: missing tokenizer config") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise MediaError(f"{meta_path}: malformed tokenizer config ({e!r})") from None
        tok = cls(config)
        state = load_torch(directory / "weights.pt", expected_sha256=meta.get("weights_sha256"))
        try:
            tok.model.load_state_dict(state)
        except RuntimeError as e:
            raise MediaError(
                f"{directory / 'weights.pt'}: weights do not fit the config ({e})"
            ) from None
        tok.model.eval()
        return tok


def tokenizer_class(modality: str) -> type[Tokenizer]:
    if modality not in TOKENIZER_CLASSES:
        raise VocabError(f"unknown tokenizer modality {modality!r}; have {list(TOKENIZER_CLASSES)}")
    module, name = TOKENIZER_CLASSES[modality].split(":")
    return getattr(importlib.import_module(module), name)


class TokenizerSet:
    """The text tokenizer plus optional image/audio tokenizers, and their vocabulary.

    Saved as ``directory/{text,image,audio}/`` plus ``directory/manifest.json``.
    """

    def __init__(
        self,
        text: Tokenizer,
        image: Tokenizer | None = None,
        audio: Tokenizer | None = None,
        image_max_grid: int = 64,
        added: tuple[str, ...] = (),
    ) -> None:
        self.text, self.image, self.audio = text, image, audio
        self.vocab = Vocab(
            text_size=text.codebook_size,
            image_codes=image.codebook_size if image else 0,
            audio_codes=audio.codebook_size if audio else 0,
            audio_levels=audio.n_levels if audio else 0,
            image_max_grid=image_max_grid,
            added=tuple(added),  # special tokens added for a later stage (vocab.Vocab.added)
        )

    def items(self) -> list[tuple[str, Tokenizer]]:
        return [(m, t) for m in MODALITY_ORDER if (t := getattr(self, m)) is not None]

    def __getitem__(self, modality: str) -> Tokenizer:
        tok = getattr(self, modality, None) if modality in MODALITY_ORDER else None
        if tok is None:
            raise VocabError(f"this tokenizer set has no {modality!r} tokenizer")
        return tok

    def fingerprints(self) -> dict[str, str]:
        return {m: t.fingerprint() for m, t in self.items()}

    def manifest(self) -> dict:
        return self.vocab.to_manifest(self.fingerprints())

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for modality, tok in self.items():
            tok.save(directory / modality)
        vectors = self.code_vectors()
        if vectors:  # the LM may start its media embeddings from them (model.code_vectors)
            with atomic_write(directory / CODE_VECTORS, "wb") as f:
                np.savez(f, manifest_digest=manifest_digest(self.manifest()), **vectors)
        write_json(directory / "manifest.json", self.manifest())  # last: marks the set done

    def code_vectors(self) -> dict[str, np.ndarray]:
        """``{modality: (levels, K, d)}`` for the tokenizers whose codes have vectors."""
        return {m: v for m, t in self.items() if (v := t.code_vectors()) is not None}

    @classmethod
    def load(cls, directory: str | Path) -> TokenizerSet:
        directory = Path(directory)
        vocab, manifest = load_manifest(directory)
        toks = {}
        for modality in MODALITY_ORDER:
            if (directory / modality).is_dir():
                toks[modality] = tokenizer_class(modality).load(directory / modality)
        if "text" not in toks:
            raise VocabError(f"{directory}: tokenizer set has no text/ tokenizer")
        tset = cls(**toks, image_max_grid=vocab.image_max_grid, added=vocab.added)
        check_fingerprints(manifest, tset.fingerprints(), source=str(directory / "manifest.json"))
        if tset.vocab != vocab:
            raise VocabError(
                f"{directory / 'manifest.json'}: layout {vocab} does not match the "
                f"tokenizers found ({tset.vocab})"
            )
        return tset
