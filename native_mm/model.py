"""The early-fusion decoder: one transformer over the shared token vocabulary.

Chameleon-line decoder-only transformer (Team Chameleon 2024, arXiv:2405.09818):
pre-norm RMSNorm, rotary position embeddings, SwiGLU MLP, QK-norm, no biases,
``F.scaled_dot_product_attention``, optional grouped-query attention and tied embeddings.
Written from scratch after reading nanoGPT (model.py), litgpt (model.py / config.py) and
LlamaGen (gpt.py); it sees token ids only (no tokenizer, no Lightning).

Three explicit entry points (never a mode chosen by which arguments are None):

* :meth:`Transformer.forward` -- training path: causal logits for every position.
* :meth:`Transformer.prefill` -- fills a fresh :class:`KVCache` with a (left-padded) batch
  of prompts and returns the logits of each prompt's last token.
* :meth:`Transformer.decode_step` -- appends one token per row to the cache.

Prompts of different lengths are **left padded**: row ``b`` has ``pad[b]`` filler slots
before its first real token. Pad slots are masked out of every attention and positions
are counted from each row's first real token (``position = slot - pad[b]``), so a padded
row computes exactly what it would compute alone.

Shape legend:
    B batch, T query length, S key length (cache slots), D model width (n_embd),
    H query heads, G key/value heads (n_kv_head), C head size, F MLP hidden size,
    V padded vocabulary size, L layers.

State dict (plain PyTorch: every Linear is ``nn.Linear(bias=False)``, weight (out, in)):
    wte.weight (V, D) · blocks.{i}.norm1.weight (D) · blocks.{i}.attn.qkv.weight
    ((H + 2G) C, D): queries, keys, values stacked in that order, head-major ·
    blocks.{i}.attn.qk_norm (H + G, C): per-head RMSNorm gains of queries then keys, or
    (2, C) with ``qk_norm_shared`` (one for every query head, one for every key head) ·
    blocks.{i}.attn.proj.weight (D, H C) · blocks.{i}.norm2.weight (D) ·
    blocks.{i}.mlp.gate_up.weight (2F, D): gate rows then up rows ·
    blocks.{i}.mlp.proj.weight (D, F) · norm.weight (D) · lm_head.weight (V, D), absent
    when tied. Rotary pairs are (even, odd) channels (Meta's LLaMA layout).
    CPU speed-ups (``config.kernels``) live in :mod:`native_mm.kernels`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from native_mm import kernels


class ModelConfigError(ValueError):
    """A model configuration whose sizes do not fit together."""


@dataclass
class ModelConfig:
    """Every size of the transformer; derived sizes are filled in by ``__post_init__``."""

    vocab_size: int = 512  # ids used by the shared vocabulary (Vocab.size)
    block_size: int = 256  # longest sequence (rotary table and KV cache length)
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # query heads
    n_embd: int = 64  # model width D
    n_kv_head: int | None = None  # key/value heads for GQA (None = n_head, i.e. plain MHA)
    intermediate_size: int | None = None  # SwiGLU hidden size (None = 8/3 D rounded up to 64)
    qk_norm: bool = True  # RMSNorm on each head's queries and keys (Chameleon's stabiliser)
    # one QK-norm gain shared by all query heads and one by all key heads (Qwen3's layout,
    # so `native-mm export --transformers` is exact) instead of a gain per head
    qk_norm_shared: bool = False
    tie_embeddings: bool = False  # share the input embedding with the output projection
    rope_base: float = 10000.0  # rotary embedding base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    init_std: float = 0.02  # std of the normal init (residual projections get /sqrt(2L))
    kernels: str = "auto"  # "auto": CPU speed-ups of native_mm.kernels where they apply; "plain"
    head_size: int = field(init=False)  # derived: n_embd // n_head
    padded_vocab_size: int = field(init=False)  # derived: vocab_size rounded up to 64

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"model config: {name} must be >= 1")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_embd % self.n_head:
            raise ModelConfigError(
                f"model config: n_embd={self.n_embd} not divisible by n_head={self.n_head}"
            )
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ModelConfigError(
                f"model config: n_head={self.n_head} not divisible by n_kv_head={self.n_kv_head}"
            )
        if self.kernels not in kernels.KERNELS:
            raise ModelConfigError(
                f"model config: kernels={self.kernels!r}; have {kernels.KERNELS}"
            )
        self.head_size = self.n_embd // self.n_head
        if self.head_size % 2:
            raise ModelConfigError(f"model config: head size {self.head_size} must be even (RoPE)")
        if self.intermediate_size is None:
            # LLaMA's SwiGLU sizing: 2/3 of 4D keeps the parameter count of a 4D GELU MLP.
            self.intermediate_size = 64 * math.ceil(8 * self.n_embd / 3 / 64)
        # Pad the output layer to a multiple of 64 for efficient matmuls (nanoGPT's trick);
        # the extra logits are never targets and generation masks them out.
        self.padded_vocab_size = 64 * math.ceil(self.vocab_size / 64)

    def to_dict(self) -> dict:
        """The constructor arguments only (what checkpoints and YAML store)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> ModelConfig:
        """Rebuild from :meth:`to_dict` output; derived keys are ignored, unknown ones raise."""
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        derived = {f.name for f in dataclasses.fields(cls) if not f.init}
        unknown = set(d) - init - derived
        if unknown:
            raise ModelConfigError(f"{source}: unknown model config fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in init})

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        """A preset from :data:`PRESETS`, with any field overridden (usually vocab_size)."""
        if name not in PRESETS:
            raise ModelConfigError(f"unknown model preset {name!r}; have {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Named presets. Parameter counts (embeddings included, untied) are for the vocab_size given.
PRESETS: dict[str, dict] = {
    # ~0.16M params at vocab 512: unit tests, seconds on a CPU.
    "tiny": dict(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64),
    # ~5.3M params at vocab 4096: the CPU demo recipe (minutes per epoch on 2 cores).
    "demo": dict(vocab_size=4096, block_size=512, n_layer=4, n_head=4, n_embd=256),
    # ~34.1M params at vocab 8192: the width/depth of the throughput benchmarks.
    "bench": dict(vocab_size=8192, block_size=512, n_layer=8, n_head=8, n_embd=512),
    # ~1.40B params at vocab 65536: GPU run (bf16-mixed, FSDP).
    "1b": dict(
        vocab_size=65536, block_size=4096, n_layer=24, n_head=16, n_kv_head=8, n_embd=2048,
        intermediate_size=5632,
    ),
    # ~7.01B params at vocab 65536: Chameleon-7B's shape (32 x 4096, SwiGLU 11008).
    "7b": dict(
        vocab_size=65536, block_size=4096, n_layer=32, n_head=32, n_embd=4096,
        intermediate_size=11008,
    ),
}  # fmt: skip


def rms_norm(x: Tensor, weight: Tensor, eps: float, fast: bool = False) -> Tensor:
    """``x / rms(x) * weight`` over the last dim; weight (C,) or any shape broadcasting to x.
    ``fast`` tries the CPU training kernel (:func:`native_mm.kernels.rms_norm`) first."""
    # the grad check first: inference (decoding) pays no dispatch for a training kernel
    y = kernels.rms_norm(x, weight, eps) if fast and torch.is_grad_enabled() else None
    if y is not None:
        return y
    if weight.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * weight


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias), over the last dimension."""

    def __init__(self, dim: int, eps: float, fast: bool = False) -> None:
        super().__init__()
        self.eps, self.fast = eps, fast  # fast: the CPU kernel where it applies
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps, self.fast)


def linear(d_in: int, d_out: int) -> nn.Linear:
    """A bias-free ``nn.Linear``, not initialised: :meth:`Transformer.reset_parameters` draws
    every weight (so building a model consumes no random numbers of its own)."""
    return nn.utils.skip_init(nn.Linear, d_in, d_out, bias=False, device=torch.get_default_device())


def rope_table(head_size: int, length: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each ``(length, C/2)``, for rotary embeddings (RoFormer)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate each (even, odd) channel pair of x (B, N, T, C) by its angle (RoFormer).

    freqs (B or 1, 1, T, C/2) complex: one complex multiply (eager); or real (..., 2)
    (cos, sin) pairs: the same products in real arithmetic that inductor can fuse."""
    xf = x.float().view(*x.shape[:-1], -1, 2)  # (B, N, T, C/2, 2)
    if freqs.is_complex():
        out = torch.view_as_real(torch.view_as_complex(xf) * freqs)
    else:
        x0, x1 = xf.unbind(-1)
        cos, sin = freqs.unbind(-1)
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Preallocated keys/values of every layer for a left-padded batch.

    Attributes:
        k, v: ``(L, B, G, S_max, C)`` buffers; slots ``[0, length)`` are filled.
        pad: ``(B,)`` number of left-padding slots of each row.
        length: number of filled slots (the same for every row, thanks to left padding).
    """

    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None
    ) -> None:
        if max_len > config.block_size:
            raise ModelConfigError(
                f"KV cache of {max_len} slots exceeds block_size={config.block_size}"
            )
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v ``(B, G, T, C)`` at slots ``[length, length + T)``; return all filled
        (the model advances ``length`` once every layer has written)."""
        start, stop = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:stop] = k
        self.v[layer, :, :, start:stop] = v
        return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]

    def select(self, rows: Tensor) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences)."""
        self.k, self.v, self.pad = self.k[:, rows], self.v[:, rows], self.pad[rows]


def attention_mask(pad: Tensor, q_start: int, t: int, s: int) -> Tensor:
    """Boolean ``(B, 1, T, S)`` mask (True = attend) for queries at slots [q_start, q_start+T).

    A query sees keys at or before its own slot that are not left padding. A padding query
    sees only itself, so no softmax row is empty (an empty row gives NaN, which would leak
    through the 0-weight products into later layers).
    """
    q = torch.arange(q_start, q_start + t, device=pad.device)[:, None]  # (T, 1)
    k = torch.arange(s, device=pad.device)[None, :]  # (1, S)
    real = k[None] >= pad[:, None, None]  # (B, 1, S)
    mask = (k <= q) & (real | (k == q))  # (B, T, S)
    return mask[:, None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, h, g = config.head_size, config.n_head, config.n_kv_head
        self.qkv = linear(config.n_embd, (h + 2 * g) * c)
        self.proj = linear(h * c, config.n_embd)
        self.fast = config.kernels == "auto"
        if config.qk_norm:
            # Per-head gains for the H query and G key heads (as Chameleon's per-head norm),
            # one (H+G, C) tensor so queries and keys are normalised in a single call; shared:
            # (2, C), expanded to (H+G, C) per call.
            self.qk_norm = nn.Parameter(torch.ones(2 if config.qk_norm_shared else h + g, c))

    def forward(
        self,
        x: Tensor,
        freqs: Tensor,
        mask: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D). ``mask`` None means plain causal over x itself."""
        cfg = self.config
        h, g, c = cfg.n_head, cfg.n_kv_head, cfg.head_size
        # Heads-first (B, N, T, C), N = H + 2G, made contiguous once: the layout SDPA's CPU
        # flash kernel runs fastest on, and every op below then keeps it (no per-op copies).
        # split() (not two slices) so the backward is one cat, not zero-fill + copy + add.
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, -1, c).transpose(1, 2).contiguous()  # (B, N, T, C)
        qk, v = qkv.split([h + g, g], dim=1)
        if cfg.qk_norm:
            gains = self.qk_norm
            if cfg.qk_norm_shared:
                gains = torch.cat((gains[:1].expand(h, c), gains[1:].expand(g, c)))
            qk = rms_norm(qk, gains.unsqueeze(1), cfg.norm_eps, self.fast)
        q, k = apply_rope(qk, freqs).split([h, g], dim=1)  # queries and keys rotated together
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, G, S, C)
        if g != h:
            # Expanding K/V here is cheaper on CPU than SDPA's enable_gqa math path.
            k = k.repeat_interleave(h // g, dim=1)
            v = v.repeat_interleave(h // g, dim=1)
        # mask None: training/prefill without padding -> causal; a 1-token decode with no
        # padding attends to every filled slot, so neither needs a mask tensor.
        is_causal = mask is None and q.shape[2] > 1
        fast = self.fast and is_causal and cache is None
        y = kernels.causal_attention(q, k, v) if fast else None
        if y is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, H C)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up = linear(config.n_embd, 2 * config.intermediate_size)
        self.proj = linear(config.intermediate_size, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        fast = config.kernels == "auto"
        self.norm1 = RMSNorm(config.n_embd, config.norm_eps, fast)
        self.attn = Attention(config)
        self.norm2 = RMSNorm(config.n_embd, config.norm_eps, fast)
        self.mlp = MLP(config)

    def forward(self, x, freqs, mask, cache=None, layer=0) -> Tensor:
        x = x + self.attn(self.norm1(x), freqs, mask, cache, layer)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Decoder-only LM over ``config.padded_vocab_size`` ids."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps, config.kernels == "auto")
        # Tied: the output layer is the embedding table itself (F.linear in head()).
        d, v = config.n_embd, config.padded_vocab_size
        self.lm_head = None if config.tie_embeddings else linear(d, v)
        half = config.head_size // 2
        self.register_buffer("rope_cos", torch.empty(config.block_size, half), persistent=False)
        self.register_buffer("rope_sin", torch.empty(config.block_size, half), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) everywhere, residual output projections scaled by
        1/sqrt(2 L) so the residual stream's variance does not grow with depth; norms = 1."""
        cfg, std = self.config, self.config.init_std
        # Buffers too: a model built on the meta device is materialised through this method.
        cos, sin = rope_table(cfg.head_size, cfg.block_size, cfg.rope_base)
        with torch.no_grad():
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)
        for name, p in self.named_parameters():
            if p.dim() == 1 or name.endswith("qk_norm"):  # norm gains
                nn.init.ones_(p)
                continue
            s = std / math.sqrt(2 * cfg.n_layer) if name.endswith("proj.weight") else std
            if name.startswith("wte"):
                nn.init.normal_(p, 0.0, s)
            else:  # Linear: drawn (in, out) and transposed, the draws of earlier releases
                with torch.no_grad():
                    p.copy_(torch.empty(p.shape[::-1], device=p.device).normal_(0.0, s).t())

    # ---- counting ------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` drops the input table (a lookup, not a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), for MFU: 6 N for the matmul weights
        (N: no embedding lookup, lm_head included) + 12 L D T for attention scores and sums
        (PaLM, Chowdhery et al. 2022, appendix B)."""
        cfg = self.config
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:  # the tied table is used once as a matmul (lm_head)
            n = sum(p.numel() for p in self.parameters())
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * seq_len

    # ---- forward passes --------------------------------------------------------------
    def rope(self, positions: Tensor | slice) -> Tensor:
        """Rotations for positions (B, T) -> (B, 1, T, C/2); a slice -> (1, 1, T, C/2).
        Built per call from the real buffers: ``Module.to(dtype)`` would drop the imaginary
        part of a stored complex table. Real (cos, sin) pairs under ``torch.compile``."""
        cos, sin = self.rope_cos[positions].float(), self.rope_sin[positions].float()
        if torch.compiler.is_compiling():
            freqs = torch.stack((cos, sin), dim=-1)
        else:
            freqs = torch.complex(cos, sin)
        return freqs[None, None] if isinstance(positions, slice) else freqs[:, None]

    def forward(self, idx: Tensor, pad: Tensor | None = None) -> Tensor:
        """Causal logits ``(B, T, V)`` of ids ``(B, T)`` at every position; ``pad`` (B,)
        left-padding counts (generation without a cache; packed training needs none)."""
        return self.head(self.hidden(idx, pad))

    def hidden(self, idx: Tensor, pad: Tensor | None = None) -> Tensor:
        """``forward`` without the output layer: final-normed states ``(B, T, D)`` (the
        training loss applies :attr:`head_weight` itself, in row chunks fused with the
        cross-entropy, so the ``(B, T, V)`` logits are never materialised at once)."""
        b, t = idx.shape
        if t > self.config.block_size:
            raise ModelConfigError(
                f"sequence of {t} tokens exceeds block_size={self.config.block_size}"
            )
        if pad is None:
            mask, freqs = None, self.rope(slice(0, t))
        else:
            mask = attention_mask(pad, 0, t, t)
            slots = torch.arange(t, device=idx.device).expand(b, t)
            freqs = self.rope((slots - pad[:, None]).clamp(min=0))
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, freqs, mask)
        return self.norm(x)

    @property
    def head_weight(self) -> Tensor:
        """The output layer's ``(V, D)`` weight (the embedding table itself if tied)."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def head(self, x: Tensor) -> Tensor:
        """Output projection of normed states: (B, T, D) -> (B, T, V)."""
        return F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype (``max_len`` defaults to block_size)."""
        p, n = self.wte.weight, max_len or self.config.block_size
        return KVCache(self.config, batch_size, n, p.device, p.dtype)

    def prefill(self, idx: Tensor, cache: KVCache, pad: Tensor | None = None) -> Tensor:
        """Run left-padded prompts through the model, filling an empty cache.

        Args:
            idx: ``(B, T)`` prompt ids, row b left padded with ``pad[b]`` filler tokens.
            cache: an empty :class:`KVCache` with ``batch_size == B``.
            pad: ``(B,)`` padding counts (None = no padding).

        Returns:
            ``(B, V)`` logits for the token after each prompt.
        """
        if cache.length:
            raise ValueError("prefill needs an empty KV cache; make a new one with new_cache()")
        b, t = idx.shape
        if cache.batch_size != b:
            raise ValueError(f"cache holds {cache.batch_size} rows, prompts have {b}")
        cache.pad = torch.zeros(b, dtype=torch.long, device=idx.device) if pad is None else pad
        return self._extend(idx, cache, last_only=True)[:, -1]

    def decode_step(self, idx: Tensor, cache: KVCache) -> Tensor:
        """Append one token per row. idx ``(B,)`` -> logits ``(B, V)`` for the next token."""
        return self._extend(idx[:, None], cache)[:, -1]

    def _extend(self, idx: Tensor, cache: KVCache, last_only: bool = False) -> Tensor:
        """idx (B, T) written at cache slots [length, length + T) -> logits (B, T, V).

        ``last_only`` projects only the last position (B, 1, V): a prompt's other logits
        are never sampled, and the output layer is the largest matmul at small widths.
        """
        b, t = idx.shape
        start = cache.length
        if start + t > cache.max_len:
            raise ModelConfigError(
                f"generation reached {start + t} tokens, beyond the cache's {cache.max_len} "
                f"(block_size={self.config.block_size})"
            )
        padded = bool(cache.pad.any())
        # no mask for a causal prefill from empty, or for one token that sees every slot
        masked = padded or (t > 1 and start > 0)
        mask = attention_mask(cache.pad, start, t, start + t) if masked else None
        if padded:
            slots = torch.arange(start, start + t, device=idx.device).expand(b, t)
            freqs = self.rope((slots - cache.pad[:, None]).clamp(min=0))
        else:
            freqs = self.rope(slice(start, start + t))
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, freqs, mask, cache, i)
        cache.length = start + t
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x))
