"""Checkpoints: load, save and export a model with the vocabulary and layouts it was trained
on. The one place that reads model files; no Lightning needed.

Four forms are read by :func:`load_checkpoint`:

* the training checkpoint ``native-mm fit`` writes (Lightning ``.ckpt``: ``model_config``,
  ``vocab_manifest``, ``layout`` and a ``state_dict`` whose keys start with ``model.``);
* the plain inference file :func:`save_checkpoint` writes (``.pt``);
* the model directory :func:`export_model` writes: ``model.safetensors`` (PyTorch's
  standard names and ``nn.Linear`` layout, see :mod:`native_mm.model`), ``config.json``
  (model config, layout) and ``vocab.json`` (the tokenizer set's manifest), each with its
  sha256 in ``NAME.sha256.json`` beside it (checked on load when present);
* the sharded checkpoint FSDP writes (``strategy.state_dict_type: sharded``: a directory of
  ``torch.distributed.checkpoint`` files, one per rank, and Lightning's ``meta.pt``),
  consolidated in memory into the full weights (:func:`_read_sharded`). Its ``.metadata``
  file is a pickle: consolidate only checkpoints your own runs wrote.

Every problem a user can cause (a missing, corrupt or foreign file, weights that do not
fit the config, another tokenizer set, an impossible layout) is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from native_mm import kernels
from native_mm.io import (
    load_torch,
    read_json,
    sha256_bytes,
    torch_bytes,
    verify_checked,
    write_checked,
    write_json,
)
from native_mm.layouts import Layout, LayoutError
from native_mm.model import ModelConfig, ModelConfigError, Transformer
from native_mm.sequence import SequenceCodec
from native_mm.vocab import Vocab, VocabError, check_fingerprints

# How Linear weights are stored: "nn.Linear" = (out, in), PyTorch's standard layout. Files
# written before this key existed stored them (in, out) and are transposed on load.
WEIGHT_LAYOUT = "nn.Linear"
EXPORT_FORMAT = "native-mm/1"
SHARDED_META = "meta.pt"  # Lightning's file of a sharded checkpoint's non-tensor state
_LINEAR_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "mlp.gate_up.weight",
                    "mlp.proj.weight", "lm_head.weight")  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@dataclass
class Pretrained:
    """Everything generation needs from a checkpoint: the model (eval mode), the
    vocabulary it reads and the media layouts it was trained on."""

    model: Transformer
    vocab: Vocab
    layout: Layout
    steps: int | None = None  # optimiser steps it was trained for (None: not recorded)

    @property
    def codec(self) -> SequenceCodec:
        return SequenceCodec(self.vocab, self.layout)


def model_state(ckpt: dict) -> dict:
    """The transformer's state dict of a checkpoint dict, in the current layout: Lightning's
    ``model.`` prefix removed, (in, out) Linear weights of older files transposed."""
    state = ckpt["state_dict"]
    if state and any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if ckpt.get("weight_layout") != WEIGHT_LAYOUT:
        state = {k: v.t() if k.endswith(_LINEAR_SUFFIXES) else v for k, v in state.items()}
    return state


def _read_sharded(path: Path, map_location: str) -> dict:
    """A sharded FSDP checkpoint -> the training checkpoint's dict with the full weights
    (gathered from every rank's file; the optimizer state is not read)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        meta = load_torch(path / SHARDED_META, map_location=map_location)
        config = ModelConfig.from_dict(meta["model_config"], source=str(path / SHARDED_META))
        state = {f"model.{k}": v for k, v in Transformer(config).state_dict().items()}
        dcp.load({"model": state}, checkpoint_id=str(path), no_dist=True)  # fills in place
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, CheckpointException) as e:
        why = " ".join(str(e).split())[-300:]  # a rank's traceback ends with its error
        msg = f"{path}: cannot consolidate the sharded checkpoint: {why}"
        raise CheckpointError(msg) from None
    return {**meta, "state_dict": state}


def _read(path: Path, map_location: str) -> dict:
    """A checkpoint file or export directory -> one dict of the training checkpoint's shape."""
    if path.is_dir() and (path / SHARDED_META).is_file():
        return _read_sharded(path, map_location)
    if path.is_dir():
        from safetensors import SafetensorError
        from safetensors.torch import load

        for name in ("config.json", "vocab.json", "model.safetensors"):
            if not (path / name).is_file():
                raise CheckpointError(f"{path}: not a model directory ({name} missing)")
        what = "model directory file"
        try:
            config, _ = read_json(path, "config.json", CheckpointError, what, verify=True)
            manifest, _ = read_json(path / "vocab.json", "", CheckpointError, what, verify=True)
            weights = path / "model.safetensors"
            data = weights.read_bytes()
            verify_checked(weights, sha256_bytes(data), what=what, hint="export it again")
            state = {k: v.to(map_location) for k, v in load(data).items()}
        except (ValueError, SafetensorError, OSError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: cannot read the model directory ({e})") from None
        if not isinstance(config, dict) or not isinstance(manifest, dict):
            raise CheckpointError(f"{path}: config.json and vocab.json must hold JSON objects")
        if config.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{path}: config.json format {config.get('format')!r}, "
                                  f"expected {EXPORT_FORMAT!r}")  # fmt: skip
        return {**config, "manifest": manifest, "state_dict": state}
    try:  # checksum beside the file verified first, then weights_only=True
        ckpt = load_torch(path, map_location=map_location)
    except ValueError as e:  # a corrupt, truncated or foreign file
        raise CheckpointError(str(e)) from None
    return ckpt if isinstance(ckpt, dict) else {}


def _check_tokenizers(
    path: Path, manifest: dict, vocab: Vocab, tokenizers: Any, grow: bool = False
) -> Vocab:
    """``tokenizers``: a TokenizerSet or a vocabulary manifest (e.g. a shard set's);
    ``grow``: it may add specials to the checkpoint's vocabulary. Returns its vocabulary."""
    if isinstance(tokenizers, dict):
        want, fingerprints = Vocab.from_manifest(tokenizers), tokenizers.get("fingerprints", {})
    else:
        want, fingerprints = tokenizers.vocab, tokenizers.fingerprints()
    try:
        check_fingerprints(manifest, fingerprints, source=str(path))
    except VocabError as e:
        raise CheckpointError(str(e)) from None
    if want != vocab and not (grow and vocab.grows_into(want)):
        raise CheckpointError(
            f"{path}: the checkpoint's vocabulary {vocab} differs from the tokenizer set's {want}"
        )
    return want


def _grown(state: dict, model: Transformer, old: int, new: int) -> dict:
    """Embedding and output rows for ids ``[old, new)`` (added specials): the old rows kept
    bit for bit, each new row the mean of the old ones (Hewitt 2021: a new token starts
    where the model's average token is, not at a random or a padding row)."""
    fresh = model.state_dict()
    for key in ("wte.weight", "lm_head.weight"):
        if key in state:
            rows = fresh[key].detach().clone()
            rows[:old] = state[key][:old]
            rows[old:new] = state[key][:old].mean(0)
            state[key] = rows
    return state


def load_checkpoint(
    path: str | Path, tokenizers: Any = None, map_location: str = "cpu"
) -> Pretrained:
    """A model from any checkpoint form, checked against a tokenizer set.

    Args:
        path: a ``.ckpt`` / ``.pt`` file or a directory written by :func:`export_model`.
        tokenizers: the TokenizerSet (or a vocabulary manifest) the model must match;
            None skips the check.
        map_location: device for the weights.

    Returns:
        :class:`Pretrained`: the model in eval mode, its vocabulary, and its layout (the
        checkpoint's ``layout``; older files: ``audio_levels``; open kinds filled with the
        vocabulary's defaults).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: anything else that makes the file unusable (see module docstring).
    """
    path = Path(path)
    ckpt = _read(path, map_location)
    manifest = ckpt.get("manifest", ckpt.get("vocab_manifest"))
    if "model_config" not in ckpt or not manifest or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not a native-mm checkpoint (needs model_config, a vocabulary manifest "
            "and state_dict)"
        )
    try:
        vocab = Vocab.from_manifest(manifest, source=f"{path} manifest")
        config = ModelConfig.from_dict(ckpt["model_config"], source=str(path))
        layout = Layout.from_manifest(ckpt, "layout").resolved(vocab)
    except (VocabError, ModelConfigError, LayoutError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if tokenizers is not None:
        _check_tokenizers(path, manifest, vocab, tokenizers)
    model = Transformer(config)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model_config ({e})") from None
    if config.kernels == "auto":
        kernels.decode_layout(model)  # inference: same values, faster CPU decoding
    steps = ckpt.get("global_step")
    return Pretrained(model.eval(), vocab, layout, int(steps) if steps is not None else None)


def init_weights(model: Transformer, path: str | Path, manifest: dict) -> int | None:
    """Start ``model`` from the weights of a checkpoint or model directory (a new training
    stage: nothing but the weights is taken). ``manifest``: the vocabulary of the new
    run's data, which must be the checkpoint's, or the checkpoint's plus added specials
    (the model grows into them: :func:`_grown`); returns the steps the weights had.

    Raises:
        CheckpointError: not a native-mm checkpoint, another vocabulary or tokenizers,
            weights of another shape than ``model``'s (each names the file).
    """
    path = Path(path)
    ckpt = _read(path, "cpu")
    stored = ckpt.get("manifest", ckpt.get("vocab_manifest"))
    if not stored or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a native-mm checkpoint (no vocabulary manifest "
                              "or state_dict) to start from")  # fmt: skip
    try:
        vocab = Vocab.from_manifest(stored, source=f"{path} manifest")
    except VocabError as e:
        raise CheckpointError(f"{path}: {e}") from None
    want = _check_tokenizers(path, stored, vocab, manifest, grow=True)
    state = model_state(ckpt)
    if want.size != vocab.size and "wte.weight" in state:
        state = _grown(state, model, vocab.size, want.size)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{path}: its weights do not fit this run's model.arch ({why})"
        ) from None
    steps = ckpt.get("global_step")
    return int(steps) if steps is not None else None


def _contiguous(model: Transformer) -> dict:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | Path, model: Transformer, manifest: dict, layout: Layout | None = None
) -> None:
    """Write the plain inference file read by :func:`load_checkpoint` (atomically, with
    its sha256 in ``NAME.sha256.json`` beside it)."""
    obj = {"model_config": model.config.to_dict(), "manifest": manifest,
           "layout": (layout or Layout()).to_dict(), "weight_layout": WEIGHT_LAYOUT,
           "state_dict": _contiguous(model)}  # fmt: skip
    write_checked(path, torch_bytes(obj))


def export_model(pretrained: Pretrained, out_dir: str | Path, manifest: dict) -> Path:
    """Write a model directory other tools read without native-mm: ``model.safetensors``
    (standard ``nn.Linear`` names and layout), ``config.json`` and ``vocab.json``.

    ``manifest`` is the tokenizer set's (``TokenizerSet.manifest()``): it records the
    tokenizers' fingerprints, so a mismatched set is refused on load.
    """
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # tied weights have one name (wte.weight; no lm_head), so no storage is shared
    write_checked(out / "model.safetensors", save(_contiguous(pretrained.model), {"format": "pt"}))
    config = {"format": EXPORT_FORMAT, "weight_layout": WEIGHT_LAYOUT,
              "model_config": pretrained.model.config.to_dict(),
              "layout": pretrained.layout.to_dict()}  # fmt: skip
    write_json(out / "config.json", config, checksum=True)
    write_json(out / "vocab.json", manifest, checksum=True)
    return out
