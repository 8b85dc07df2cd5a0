"""Inference checkpoints: a model plus the vocabulary it was trained with; no Lightning.

Reads the training checkpoint (Lightning ``.ckpt``) and the plain inference file that
:func:`save_checkpoint` writes, and refuses a tokenizer set other than the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from native_mm import kernels
from native_mm.constraints import GenerationError
from native_mm.io import load_torch, torch_bytes, write_checked
from native_mm.layouts import Layout, LayoutError
from native_mm.model import ModelConfig, Transformer
from native_mm.sequence import SequenceCodec
from native_mm.vocab import Vocab, check_fingerprints


def check_model_vocab(model: Transformer, vocab: Vocab) -> None:
    if model.config.vocab_size != vocab.size:
        raise GenerationError(
            f"the model has vocab_size={model.config.vocab_size} but the tokenizer set's "
            f"vocabulary has {vocab.size} ids: wrong tokenizer set for this model"
        )


# ---- checkpoints -------------------------------------------------------------------------
# How Linear weights are stored: "nn.Linear" = (out, in), PyTorch's standard layout. Files
# written before this key existed stored them (in, out) and are transposed on load.
WEIGHT_LAYOUT = "nn.Linear"
_LINEAR_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "mlp.gate_up.weight",
                    "mlp.proj.weight", "lm_head.weight")  # fmt: skip


def model_state(ckpt: dict) -> dict:
    """The transformer's state dict of a checkpoint dict, in the current layout: Lightning's
    ``model.`` prefix removed, (in, out) Linear weights of older files transposed."""
    state = ckpt["state_dict"]
    if state and any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if ckpt.get("weight_layout") != WEIGHT_LAYOUT:
        state = {k: v.t() if k.endswith(_LINEAR_SUFFIXES) else v for k, v in state.items()}
    return state


@dataclass
class Pretrained:
    """Everything generation needs from a checkpoint: the model (eval mode), the
    vocabulary it reads and the media layouts it was trained on."""

    model: Transformer
    vocab: Vocab
    layout: Layout

    @property
    def codec(self) -> SequenceCodec:
        return SequenceCodec(self.vocab, self.layout)


def load_checkpoint(
    path: str | Path, tokenizers: Any = None, map_location: str = "cpu"
) -> Pretrained:
    """A model from a checkpoint, checked against a tokenizer set; Lightning not needed.

    Accepts the training checkpoint (Lightning ``.ckpt`` with top-level ``model_config``,
    ``vocab_manifest`` and a ``state_dict`` whose keys start with ``model.``) and a plain
    ``{"model_config", "manifest", "state_dict"}`` file (see :func:`save_checkpoint`).
    The layout is the checkpoint's ``layout`` (older files: ``audio_levels``), its open
    kinds filled with the vocabulary's defaults.

    Raises:
        FileNotFoundError: no such file.
        GenerationError: not a native-mm checkpoint, or the tokenizer set differs from the
            one the model was trained with (fingerprints or vocabulary layout).
    """
    path = Path(path)
    try:  # checksum beside the file verified first, then weights_only=True
        ckpt = load_torch(path, map_location=map_location)
    except ValueError as e:  # a corrupt, truncated or foreign file
        raise GenerationError(str(e)) from None
    manifest = ckpt.get("manifest", ckpt.get("vocab_manifest")) if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or not manifest:
        raise GenerationError(
            f"{path}: not a native-mm checkpoint (needs model_config, a vocabulary manifest "
            "and state_dict)"
        )
    vocab = Vocab.from_manifest(manifest, source=f"{path} manifest")
    if tokenizers is not None:
        check_fingerprints(manifest, tokenizers.fingerprints(), source=str(path))
        if tokenizers.vocab != vocab:
            raise GenerationError(
                f"{path}: the checkpoint's vocabulary {vocab} differs from the tokenizer "
                f"set's {tokenizers.vocab}"
            )
    config = ModelConfig.from_dict(ckpt["model_config"], source=str(path))
    model = Transformer(config)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as e:
        raise GenerationError(f"{path}: weights do not fit model_config ({e})") from None
    try:
        layout = Layout.from_manifest(ckpt, "layout").resolved(vocab)
    except LayoutError as e:
        raise GenerationError(f"{path}: {e}") from None
    if config.kernels == "auto":
        kernels.decode_layout(model)  # inference: same values, faster CPU decoding
    return Pretrained(model.eval(), vocab, layout)


def save_checkpoint(
    path: str | Path, model: Transformer, manifest: dict, layout: Layout | None = None
) -> None:
    """Write the plain inference checkpoint read by :func:`load_checkpoint` (atomically,
    with its sha256 in ``NAME.sha256.json`` beside it)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    obj = {"model_config": model.config.to_dict(), "manifest": manifest,
           "layout": (layout or Layout()).to_dict(), "weight_layout": WEIGHT_LAYOUT,
           "state_dict": state}  # fmt: skip
    write_checked(path, torch_bytes(obj))
