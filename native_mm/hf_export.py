"""Our decoder as a Hugging Face ``transformers`` checkpoint, so the ecosystem's engines
(transformers ``generate``, vLLM, TGI) can serve the early-fusion model over token ids
while our tokenizers encode and decode the media around it.

The decoder is a pre-norm RMSNorm / RoPE / SwiGLU transformer without biases: with
QK-norm it is ``Qwen3ForCausalLM``, without it ``LlamaForCausalLM``. What differs, and how
the export handles it:

* **RoPE pairs**: ours rotate (even, odd) channel pairs, theirs (i, i + C/2) ("rotate
  half"). Exact by permuting each query and key head's output rows (and the QK-norm gains,
  applied before the rotation) to even channels first, then odd ones; the RMS of a head
  does not depend on its channel order.
* **QK-norm gains**: ours may hold a gain per head, Qwen3 one per query/key projection.
  Exact when every head's gain is the same (a model trained with
  ``model.arch.qk_norm_shared: true``, or an untrained one); otherwise refused with an
  :class:`ExportError`, never averaged.
* **Fused projections**: our ``qkv`` and ``gate_up`` weights are split by rows.
* **Padded vocabulary**: the output layer has ``padded_vocab_size`` rows; the ids past the
  vocabulary are never targets, and ``generation_config.json`` suppresses them.

Needs only torch and safetensors; ``transformers`` is what reads the result.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from native_mm.io import write_bytes, write_json
from native_mm.model import ModelConfig, Transformer
from native_mm.vocab import BOS, EOS, PAD

SUBDIR = "transformers"  # where `native-mm export --transformers` writes, in the model dir


class ExportError(ValueError):
    """A model that cannot be written exactly in the target layout; says which option to use."""


def architecture(config: ModelConfig) -> str:
    return "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"


def hf_config(config: ModelConfig) -> dict:
    """The ``config.json`` of the Qwen3/Llama model with our sizes (transformers 4.51+)."""
    rope = {"rope_type": "default", "rope_theta": config.rope_base}
    common = {
        "architectures": [architecture(config)],
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,  # transformers 4.x reads this key, 5.x the next
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": config.init_std,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if config.qk_norm:
        return {**common, "model_type": "qwen3", "use_sliding_window": False,
                "sliding_window": None, "max_window_layers": config.n_layer}  # fmt: skip
    return {**common, "model_type": "llama", "mlp_bias": False, "pretraining_tp": 1}


def _rotate_half_order(head_size: int) -> Tensor:
    """Channel order that turns (even, odd) rotary pairs into (i, i + C/2) pairs."""
    return torch.cat((torch.arange(0, head_size, 2), torch.arange(1, head_size, 2)))


def _shared_gains(gains: Tensor, heads: int, what: str, layer: int) -> Tensor:
    """One gain (C,) for ``heads`` rows of per-head gains, or ExportError if they differ."""
    if not torch.equal(gains, gains[:1].expand(heads, -1)):
        raise ExportError(
            f"layer {layer}: the {what} heads have different QK-norm gains; Qwen3 shares one "
            "gain across heads, so this model has no exact transformers form (train with "
            "model.arch.qk_norm_shared: true to export it)"
        )
    return gains[0]


def hf_state(model: Transformer) -> dict[str, Tensor]:
    """Our state dict renamed and reordered into transformers' Qwen3/Llama names."""
    cfg = model.config
    h, g, c, f = cfg.n_head, cfg.n_kv_head, cfg.head_size, cfg.intermediate_size
    order = _rotate_half_order(c)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[p + "attn.qkv.weight"].split([h * c, g * c, g * c])
        out[q + "self_attn.q_proj.weight"] = wq.view(h, c, -1)[:, order].reshape(h * c, -1)
        out[q + "self_attn.k_proj.weight"] = wk.view(g, c, -1)[:, order].reshape(g * c, -1)
        out[q + "self_attn.v_proj.weight"] = wv
        out[q + "self_attn.o_proj.weight"] = sd[p + "attn.proj.weight"]
        if cfg.qk_norm:
            gains = sd[p + "attn.qk_norm"]
            if cfg.qk_norm_shared:
                gq, gk = gains[0], gains[1]
            else:
                gq = _shared_gains(gains[:h], h, "query", i)
                gk = _shared_gains(gains[h:], g, "key", i)
            out[q + "self_attn.q_norm.weight"] = gq[order]
            out[q + "self_attn.k_norm.weight"] = gk[order]
        gate, up = sd[p + "mlp.gate_up.weight"].split([f, f])
        out[q + "mlp.gate_proj.weight"], out[q + "mlp.up_proj.weight"] = gate, up
        out[q + "mlp.down_proj.weight"] = sd[p + "mlp.proj.weight"]
        out[q + "input_layernorm.weight"] = sd[p + "norm1.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "norm2.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def export_transformers(model: Transformer, out_dir: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``generation_config.json`` that
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads (ids in, ids out).

    Raises:
        ExportError: per-head QK-norm gains that differ (see the module docstring).
    """
    return write_transformers(hf_state(model), model.config, out_dir)  # raises before writing


def write_transformers(state: dict[str, Tensor], config: ModelConfig, out_dir: str | Path) -> Path:
    """Write :func:`hf_state`'s weights with their config and generation config."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "model.safetensors", save(state, {"format": "pt"}))
    write_json(out / "config.json", hf_config(config))
    padding = list(range(config.vocab_size, config.padded_vocab_size))
    write_json(out / "generation_config.json", {
        "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
        "suppress_tokens": padding or None,  # ids past the vocabulary: never sampled
    })  # fmt: skip
    return out
