"""Peer models measured side by side with native-mm in the same benchmark run."""

from __future__ import annotations

import torch

from native_mm.model import ModelConfig


def hf_chameleon(cfg: ModelConfig) -> torch.nn.Module:
    """HF ``ChameleonForConditionalGeneration`` of the same shape, random init, SDPA.

    Same width, depth, heads, KV heads, SwiGLU size, vocabulary (padded), context and
    RMSNorm eps as ``cfg``. Its image VQ-GAN is part of the HF class but never used on
    token ids, so it is kept small; the last vocabulary id stands in as its image token.
    """
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    image_id = cfg.padded_vocab_size - 1
    hf = ChameleonConfig(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        vocabulary_map={"<image>": image_id},
        image_token_id=image_id,
        pad_token_id=0,
        eos_token_id=2,
        vq_config={"base_channels": 32, "channel_multiplier": [1, 2], "num_res_blocks": 1,
                   "resolution": 32, "embed_dim": 32, "latent_channels": 32},
    )  # fmt: skip
    hf._attn_implementation = "sdpa"
    return ChameleonForConditionalGeneration(hf)
