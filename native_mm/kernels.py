"""CPU speed-ups of the plain model, each behind ``ModelConfig.kernels`` ("auto" / "plain").

``model.py`` is the reference a reader holds in their head; these functions compute the
same values faster on this project's 2-core CPU, and each has a test that compares it with
the plain path (values and gradients). On other devices, under autocast, under
``torch.compile`` or with ``kernels: plain`` the plain path runs.

* :func:`rms_norm` -- RMSNorm with a hand-written backward (torch's CPU autograd records
  the composite pow/mean/rsqrt/mul graph).
* :func:`causal_attention` -- causal softmax attention in query blocks of plain matmuls:
  SDPA's CPU flash backward took ~1.5x as long at (B, H, T, C) = (2, 8, 512, 64).
* :func:`head_cross_entropy` -- output layer fused with the cross-entropy, row chunk by
  row chunk, gradients made in the forward (Liger-Kernel's fused linear cross-entropy).
* :func:`decode_layout` -- column-major ``nn.Linear`` weights for decoding, on huge pages
  where Linux allows: BLAS takes its non-transposed path for the skinny one-token matmuls
  (~1.4x over the standard layout here).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERNELS = ("auto", "plain")

# torch's fused RMSNorm forward (returns the normed x and 1/rms) is a private aten op; the
# public composite below gives the same values when a torch release drops or renames it
_FUSED_RMS = getattr(torch.ops.aten, "_fused_rms_norm", None)


def _rms_parts(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x / rms(x), 1 / rms(x))`` over the last dim."""
    if _FUSED_RMS is not None:
        try:
            return _FUSED_RMS(x, [x.shape[-1]], None, eps)
        except (RuntimeError, NotImplementedError):
            pass
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * rstd, rstd


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm times a gain ``w`` broadcasting over x (B, ..., C): (C,) or (N, 1, C)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, eps: float) -> Tensor:
        xhat, rstd = _rms_parts(x, eps)
        ctx.save_for_backward(xhat, rstd, w)
        return xhat * w

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor, Tensor, None]:
        xhat, rstd, w = ctx.saved_tensors
        gxhat = gy * w
        # d xhat / d x = rstd (I - xhat xhat^T / C): remove the xhat component, rescale
        dot = torch.linalg.vecdot(gxhat, xhat).unsqueeze(-1) / xhat.shape[-1]
        gx = torch.addcmul(gxhat, xhat, dot, value=-1).mul_(rstd)
        gw = gy * xhat
        dims = [i for i in range(gw.dim()) if i < gw.dim() - w.dim() or w.shape[i - gw.dim()] == 1]
        return gx, gw.sum(dims, keepdim=False).reshape(w.shape), None


def _eager_cpu_training(x: Tensor) -> bool:
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
        and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
    )  # fmt: skip


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor | None:
    """The fast RMSNorm, or None where the plain ``F.rms_norm`` should run."""
    if not _eager_cpu_training(x) or x.dtype != weight.dtype:
        return None
    return _RMSNormFn.apply(x, weight, eps)


class _CausalAttentionFn(torch.autograd.Function):
    """Query block [s, s+K) attends keys [0, s+K): 5/8 of the full T x T products at T=512,
    K=128, each a batched matmul. Probabilities are kept for the backward (O(T^2) memory,
    hence only T <= 1024)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, block: int) -> Tensor:
        shape = q.shape
        q, k, v = (z.reshape(-1, *z.shape[-2:]) for z in (q, k, v))  # (B H, T, C)
        t, scale = q.shape[1], q.shape[-1] ** -0.5
        above = torch.full((block, block), float("-inf"), dtype=q.dtype).triu(1)
        ys, probs = [], []
        for s in range(0, t, block):
            e = min(s + block, t)
            bias = F.pad(above[: e - s, : e - s], (s, 0))  # (K, e): -inf above the diagonal
            p = torch.baddbmm(bias, q[:, s:e], k[:, :e].transpose(1, 2), alpha=scale)
            probs.append(p.softmax(-1))  # (B H, K, e)
            ys.append(torch.bmm(probs[-1], v[:, :e]))  # (B H, K, C)
        ctx.block, y = block, torch.cat(ys, 1)
        ctx.save_for_backward(q, k, v, y, *probs)
        return y.view(shape)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, y, *probs = ctx.saved_tensors
        shape, gy = gy.shape, gy.reshape(q.shape)
        rowdot = torch.linalg.vecdot(gy, y).unsqueeze(-1)  # (B H, T, 1): sum_j p_j dp_j
        gq, gk, gv = [], None, None
        # Last query block first: it spans all keys, so it creates gk and gv; the earlier
        # blocks add into prefixes (bmm + add: baddbmm_ into a slice runs per batch row).
        for p, s in reversed(list(zip(probs, range(0, q.shape[1], ctx.block), strict=True))):
            e, g = s + p.shape[1], gy[:, s : s + p.shape[1]]
            gs = torch.bmm(g, v[:, :e].transpose(1, 2)).sub_(rowdot[:, s:e]).mul_(p)  # softmax'
            gq.insert(0, torch.bmm(gs, k[:, :e]))
            dk, dv = torch.bmm(gs.transpose(1, 2), q[:, s:e]), torch.bmm(p.transpose(1, 2), g)
            if gk is None:  # the last block: all keys
                gk, gv = dk, dv
            else:
                gk[:, :e] += dk
                gv[:, :e] += dv
        scale = q.shape[-1] ** -0.5
        gq = torch.cat(gq, 1).mul_(scale)
        return gq.view(shape), gk.mul_(scale).view(shape), gv.view(shape), None


def causal_attention(q: Tensor, k: Tensor, v: Tensor, block: int = 128) -> Tensor | None:
    """Blocked causal attention of (B, H, T, C) q, k, v, or None where SDPA should run."""
    if not _eager_cpu_training(q) or q.shape[2] > 1024:
        return None
    return _CausalAttentionFn.apply(q, k, v, block)


class _HeadCrossEntropyFn(torch.autograd.Function):
    """Output layer + cross-entropy + argmax over row chunks, gradients made in the forward.

    Each chunk takes one argmax, one log-softmax and one exp + scale pass, in place of the
    unfused path's logsumexp, gather, argmax and their backward passes over the full
    ``(B, T, V)`` logits. The loss is ``sum_i w_ce[i] ce[i] + w_z[i] lse[i]^2``, so
    ``d loss / d logits[i] = (w_ce[i] + 2 w_z[i] lse[i]) softmax(logits[i])
    - w_ce[i] onehot(target[i])``.
    """

    @staticmethod
    def forward(ctx, h, weight, target, w_ce, w_z, rows: int, grad: bool):
        # h (N, D) normed states, weight (V, D) as nn.Linear's, target/w_ce/w_z (N,)
        n = h.shape[0]
        ce, lse = torch.empty(2, n, device=h.device)  # fp32 per-row loss and log-sum-exp
        pred = torch.empty(n, dtype=torch.long, device=h.device)
        gh, gw = torch.empty_like(h) if grad else None, None
        for s in range(0, n, rows):
            e = min(s + rows, n)
            hc, tc = h[s:e], target[s:e, None]
            logits = torch.mm(hc, weight.t()).float()  # (R, V); no copy in fp32
            pred[s:e] = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1)
            ce[s:e] = -logp.gather(1, tc).squeeze(1)
            lse[s:e] = logits.gather(1, tc).squeeze(1) + ce[s:e]
            if grad:
                c = (w_ce[s:e] + 2 * w_z[s:e] * lse[s:e])[:, None]  # (R, 1)
                g = logp.exp_().mul_(c).scatter_add_(1, tc, -w_ce[s:e, None])  # d loss/d logits
                gh[s:e] = torch.mm(g, weight)
                gwc = torch.mm(g.t(), hc)  # (V, D)
                gw = gwc if gw is None else gw.add_(gwc)
        ctx.save_for_backward(gh, gw.to(weight.dtype) if grad else None)
        ctx.mark_non_differentiable(ce, lse, pred)
        return (ce * w_ce).sum() + (lse.square() * w_z).sum(), ce, lse, pred

    @staticmethod
    def backward(ctx, g, *_):
        gh, gw = ctx.saved_tensors
        if g.ne(1).item():  # e.g. a loss divided for gradient accumulation
            gh, gw = gh * g, gw * g
        return gh, gw, None, None, None, None, None


def head_cross_entropy(
    h: Tensor, weight: Tensor, target: Tensor, w_ce: Tensor, w_z: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted loss, per-row ce, lse and argmax of ``h (N, D) @ weight (V, D).T`` logits,
    in chunks of 32 MB of fp32 logits."""
    rows = max(1, 2**23 // weight.shape[0])
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _HeadCrossEntropyFn.apply(h, weight, target, w_ce, w_z, rows, grad)


_HUGE_PAGE = 2 << 20


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the process's own C library, opened once


def _huge_block(numel: int, dtype: torch.dtype) -> Tensor:
    """A flat CPU tensor starting on a 2 MB boundary, which Linux may back with 2 MB pages
    (``madvise`` before the first write). Decoding streams every weight once per token:
    with 4 KB pages, or weights scattered over separate allocations, TLB misses cost
    ~8% of batch-1 tokens/s here (benchmarks/before_after.py)."""
    per_page = _HUGE_PAGE // torch.empty((), dtype=dtype).element_size()
    raw = torch.empty(numel + per_page, dtype=dtype)
    skip = (-raw.data_ptr() % _HUGE_PAGE) // raw.element_size()
    block = raw[skip : skip + numel]
    size = numel * raw.element_size() // _HUGE_PAGE * _HUGE_PAGE  # whole pages inside `raw`
    if sys.platform.startswith("linux") and size:
        # no libc symbol: 4 KB pages, same values
        with contextlib.suppress(OSError, AttributeError):
            _libc().madvise(ctypes.c_void_p(block.data_ptr()), ctypes.c_size_t(size), 14)
    return block


def decode_layout(model: nn.Module) -> nn.Module:
    """Store every ``nn.Linear`` weight column-major, in place (inference only), all in
    one 2 MB-aligned block per dtype, in the order a decode step reads them.

    Shapes, names and values are unchanged (``state_dict`` holds the same numbers); only
    the memory order differs, so ``F.linear``'s ``x @ W.T`` reads a row-major matrix.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for dtype in {m.weight.dtype for m in linears if m.weight.device.type == "cpu"}:
        group = [m for m in linears if m.weight.device.type == "cpu" and m.weight.dtype == dtype]
        align = 64 // group[0].weight.element_size()  # each weight starts on a 64-byte line
        sizes = [-(-m.weight.numel() // align) * align for m in group]
        block = _huge_block(sum(sizes), dtype)
        with torch.no_grad():
            offset = 0
            for m, size in zip(group, sizes, strict=True):
                w = m.weight.data
                rows = block[offset : offset + w.numel()].view(w.shape[1], w.shape[0])
                rows.copy_(w.t())  # (in, out), row-major
                m.weight.data = rows.t()
                offset += size
    return model
