"""Drawing the next token: temperature, top-k and top-p over ``(B, V)`` logits whose
disallowed ids are already at -inf (the decoding constraint's mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from native_mm.constraints import check_number

MAX_TEMPERATURE = 100.0  # flat enough to be uniform; larger only hides a typo
MAX_CFG_SCALE = 100.0
MIN_TEMPERATURE = 1e-6  # smaller positive temperatures act as this one (float32 overflow)


@dataclass
class SamplingConfig:
    """How tokens are drawn."""

    max_new_tokens: int = 256  # generated tokens per row at most (also capped by block_size)
    temperature: float = 1.0  # softmax temperature; 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely ids (None = all)
    top_p: float | None = None  # nucleus: smallest set with probability >= p (None = all)
    seed: int | None = None  # seeds a torch.Generator (None = torch's global RNG)
    cfg_scale: float | None = None  # classifier-free guidance scale (None = no uncond stream)
    use_cache: bool = True  # KV cache (False recomputes the whole sequence every step)

    def __post_init__(self) -> None:
        """Every option a finite number in range, or a GenerationError naming it."""
        check_number("max_new_tokens", self.max_new_tokens, 1, integer=True)
        check_number("temperature", self.temperature, 0, MAX_TEMPERATURE)
        if self.top_k is not None:
            check_number("top_k", self.top_k, 1, integer=True)
        if self.top_p is not None:
            check_number("top_p", self.top_p, 0, 1, low_open=True)
        if self.seed is not None:
            check_number("seed", self.seed, 0, 2**63 - 1, integer=True)
        if self.cfg_scale is not None:
            check_number("cfg_scale", self.cfg_scale, 0, MAX_CFG_SCALE)


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus.

    Args:
        logits: ``(B, V)``; -inf entries (masked ids) stay -inf.

    Returns:
        ``(B, V)`` filtered copy. The most likely id always survives.
    """
    logits = logits.clone()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits[logits < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id when the ids before it already reach p (so the first always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def sample_next(
    logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> Tensor:
    """``(B, V)`` logits (masked ids at -inf) -> ``(B,)`` sampled ids."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    t = max(cfg.temperature, MIN_TEMPERATURE)
    logits = filter_logits(logits.float() / t, cfg.top_k, cfg.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
