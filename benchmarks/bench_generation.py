"""Generation throughput: native-mm's engine vs HuggingFace ``ChameleonForConditionalGeneration``.

Same shape on both sides (width 512, 8 layers, 8 heads, SwiGLU 1408, QK-norm, vocab 8192,
random init, fp32), greedy decoding of exactly ``--new-tokens`` tokens from a random prompt,
batch 1 and 8. native-mm runs with and without its KV cache; HF runs ``generate`` with
its default (dynamic) cache. Runs alternate between the engines and each figure is the
best of ``--repeats`` runs, which damps the noise of a shared CPU.

Usage:
    nice -n 5 python benchmarks/bench_generation.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from peers import hf_chameleon  # benchmarks/peers.py (the script's folder is on sys.path)

from native_mm.constraints import OutputSpec
from native_mm.generation import SamplingConfig, generate_ids
from native_mm.model import ModelConfig, Transformer
from native_mm.vocab import Vocab


def time_ours(model, prompts, vocab, new_tokens: int, use_cache: bool, constrained: bool):
    out = OutputSpec("text" if constrained else None, constrained=constrained, stop_tokens=())
    samp = SamplingConfig(max_new_tokens=new_tokens, temperature=0, use_cache=use_cache)
    t0 = time.perf_counter()
    gens = generate_ids(model, prompts, vocab, out, samp)
    dt = time.perf_counter() - t0
    assert all(len(g.ids) == new_tokens for g in gens)
    return dt


@torch.inference_mode()
def time_hf(model, prompts, new_tokens: int):
    idx = torch.tensor(prompts)
    t0 = time.perf_counter()
    out = model.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
    )
    dt = time.perf_counter() - t0
    assert out.shape[1] == idx.shape[1] + new_tokens
    return dt


def linear_layout(cfg: ModelConfig, batch: int, repeats: int) -> tuple[float, float]:
    """Seconds for one pass over the model's matmul weights: nn.Linear's (out, in) layout
    (F.linear) vs native-mm's (in, out) layout (x @ W), best of ``repeats``."""
    import torch.nn.functional as F

    d, f, qkv = cfg.n_embd, cfg.intermediate_size, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_size
    shapes = [(qkv, d), (d, d), (2 * f, d), (d, f)] * cfg.n_layer + [(cfg.padded_vocab_size, d)]
    w_out_in = [torch.randn(o, i) for o, i in shapes]
    w_in_out = [w.t().contiguous() for w in w_out_in]
    xs = [torch.randn(batch, i) for _, i in shapes]
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(10):
                for x, w in zip(xs, w_out_in, strict=True):
                    F.linear(x, w)
            best[0] = min(best[0], (time.perf_counter() - t0) / 10)
            t0 = time.perf_counter()
            for _ in range(10):
                for x, w in zip(xs, w_in_out, strict=True):
                    x @ w
            best[1] = min(best[1], (time.perf_counter() - t0) / 10)
    return best[0], best[1]


def report(rows: list, batch: int, engine: str, seconds: float, new_tokens: int) -> None:
    tps = batch * new_tokens / seconds
    rows.append({"batch": batch, "engine": engine, "seconds": seconds, "tokens_per_s": tps})
    print(f"batch {batch:2d}  {engine:36s} {seconds:7.2f} s  {tps:8.1f} tok/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-cache-batches", type=int, nargs="*", default=[1, 8])
    p.add_argument("--no-cache-new-tokens", type=int, help="new tokens of the no-cache runs")
    p.add_argument("--layout-only", action="store_true", help="only the weight-layout timing")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--skip-hf", action="store_true", help="native-mm only (no transformers)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = Vocab(text_size=8192 - 16)  # 8192 ids: the bench preset's vocabulary
    cfg = ModelConfig.from_name("bench", vocab_size=vocab.size)
    ours = Transformer(cfg).eval()
    try:  # the weight order load_checkpoint gives an inference model
        from native_mm.kernels import decode_layout

        decode_layout(ours)
    except ImportError:  # an older tree (benchmarks/before_after.py): its own (in, out) layout
        pass
    hf = None if args.skip_hf else hf_chameleon(cfg).eval()
    n_hf = sum(p.numel() for n, p in hf.named_parameters() if "vqmodel" not in n) if hf else 0
    print(f"native-mm params {ours.num_params() / 1e6:.2f}M, HF LM params {n_hf / 1e6:.2f}M")
    print(f"threads {args.threads}, prompt {args.prompt_len}, new tokens {args.new_tokens}")
    rows = []
    for b in [] if args.layout_only else args.batches:
        g = torch.Generator().manual_seed(b)
        prompts = torch.randint(16, vocab.size, (b, args.prompt_len), generator=g)
        prompts[:, 0] = 1  # <bos>
        prompts = prompts.tolist()
        runs = {
            "native-mm cache": lambda p=prompts: time_ours(ours, p, vocab, args.new_tokens, True,
                                                           False),
            "native-mm cache+constraints": lambda p=prompts: time_ours(
                ours, p, vocab, args.new_tokens, True, True),
            "HF Chameleon generate (cache)": lambda p=prompts: time_hf(hf, p, args.new_tokens),
        }  # fmt: skip
        if hf is None:
            del runs["HF Chameleon generate (cache)"]
        best = {k: float("inf") for k in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for k, fn in runs.items():
                best[k] = min(best[k], fn())
        for k, dt in best.items():
            report(rows, b, k, dt, args.new_tokens)
        if b in args.no_cache_batches:  # quadratic: one run, maybe fewer tokens
            n = args.no_cache_new_tokens or args.new_tokens
            dt = time_ours(ours, prompts, vocab, n, False, False)
            report(rows, b, f"native-mm no cache ({n} new)", dt, n)
        if hf is not None:
            ratio = best["HF Chameleon generate (cache)"] / best["native-mm cache"]
            print(f"batch {b:2d}  native-mm cache / HF speed-up: {ratio:.2f}x")
            rows.append({"batch": b, "engine": "speedup vs HF", "ratio": ratio})
    for b in [] if args.skip_hf else args.batches:
        a, c = linear_layout(cfg, b, max(args.repeats, 1) * 3)
        print(f"batch {b:2d}  all matmuls once: F.linear (out,in) {a * 1e3:6.2f} ms, "
              f"x @ W (in,out) {c * 1e3:6.2f} ms -> {a / c:.2f}x")  # fmt: skip
        rows.append({"batch": b, "engine": "weight layout", "linear_ms": a * 1e3,
                     "in_out_ms": c * 1e3})  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
