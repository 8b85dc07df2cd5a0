"""Training throughput: native-mm's Transformer vs HF ``ChameleonForConditionalGeneration``.

Both models are randomly initialised with the same width, depth, heads, SwiGLU size,
vocabulary and sequence length, and trained with the same step (forward, fp32
cross-entropy over all positions, backward, AdamW) at the same precision (fp32, or
bf16 autocast with ``--precision bf16-mixed``). The loss is each side's own training loss
(``--loss product``, the default): native-mm's ``LanguageModule.compute_loss`` (output
layer fused with the cross-entropy in row chunks, plus the per-modality loss/accuracy
metrics it logs, over four modality ranges of the vocabulary), HF's
``model(input_ids, labels=..., shift_labels=...)`` (its ``ForCausalLMLoss``: fp32
``F.cross_entropy`` over the logits). ``--loss plain`` gives both models' logits to
the same ``F.cross_entropy`` instead (the model alone). Steps of the two models are
interleaved (A B A B ...) so load from other processes on the machine hits both alike. Reports
tokens/s (wall clock, and per CPU second of this process: with 1 thread on an
oversubscribed machine the latter leaves out the time the process waits descheduled),
achieved GFLOP/s (6N + 12 L D T per token, the same formula for both) and that as a
fraction of this CPU's measured fp32 matmul peak (a square-matmul loop), and the
speed-up per interleaved step pair (min, median, max).

    nice -n 5 python benchmarks/bench_training.py --threads 2 --steps 6
    python benchmarks/bench_training.py --precision bf16-mixed --d-model 128 --layers 2 --seq 128

Prints one JSON line with both results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F
from peers import hf_chameleon  # benchmarks/peers.py (the script's folder is on sys.path)

from native_mm.model import ModelConfig, Transformer


def matmul_peak(threads: int, n: int = 1024, seconds: float = 3.0) -> tuple[float, float]:
    """Measured fp32 matmul FLOP/s of this CPU (best of several timed loops): per second of
    wall clock, and per CPU second of this process (less disturbed by other jobs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, best_cpu = 0.0, 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(5):
            a @ b
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        best = max(best, 5 * 2 * n**3 / dt)
        best_cpu = max(best_cpu, 5 * 2 * n**3 / max(dc, 1e-9))
    return best, best_cpu


def load_model_module(path: str):
    """Import a model.py file (an older revision of native_mm/model.py) as a module."""
    spec = importlib.util.spec_from_file_location("native_mm_model_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def decode_ab(new: torch.nn.Module, old: torch.nn.Module, batches: list[int], pairs: int) -> dict:
    """Greedy decoding (prompt 32, 64 new tokens) of two models with the same weights,
    alternating, timed in CPU seconds: tokens/s of each and the per-pair ratio new/old."""
    out = {}
    for b in batches:
        prompt = torch.randint(0, 8192, (b, 32), generator=torch.Generator().manual_seed(1))
        prompt %= new.config.vocab_size
        tps: dict[str, list[float]] = {"new": [], "old": []}
        tokens = {}
        for i in range(pairs):
            order = [("new", new), ("old", old)] if i % 2 == 0 else [("old", old), ("new", new)]
            for name, m in order:
                with torch.inference_mode():
                    cache = m.new_cache(b)
                    c0 = time.process_time()
                    tok = m.prefill(prompt, cache).argmax(-1)
                    seq = [tok]
                    for _ in range(63):
                        tok = m.decode_step(tok, cache).argmax(-1)
                        seq.append(tok)
                    tps[name].append(b * 64 / (time.process_time() - c0))
                tokens[name] = torch.stack(seq, 1)
        ratio = sorted(n / o for n, o in zip(tps["new"], tps["old"], strict=True))
        out[f"batch_{b}"] = {
            "new_tokens_per_cpu_s_median": round(sorted(tps["new"])[pairs // 2], 1),
            "old_tokens_per_cpu_s_median": round(sorted(tps["old"])[pairs // 2], 1),
            "new_over_old_paired_min_median_max": [
                round(ratio[0], 3), round(ratio[pairs // 2], 3), round(ratio[-1], 3)
            ],
            "same_tokens": bool(torch.equal(tokens["new"], tokens["old"])),
        }  # fmt: skip
    return out


def build_native(cfg: ModelConfig) -> torch.nn.Module:
    return Transformer(cfg)


def build_chameleon(cfg: ModelConfig) -> torch.nn.Module:
    model = hf_chameleon(cfg)
    model.config.use_cache = False
    return model


def native_module(cfg: ModelConfig, compile: bool) -> torch.nn.Module:
    """native-mm's LanguageModule (the product's training loss) without a trainer."""
    from native_mm.training.module import LanguageModule

    module = LanguageModule(arch=cfg, compile=compile)
    module.configure_model()
    # four modality ranges, so every per-modality metric is computed as on real data
    module.modality_table.copy_(torch.arange(cfg.vocab_size) * 4 // cfg.vocab_size)
    module.logged = {}  # what self.log / self.log_dict would hand to Lightning
    module.log = lambda k, v, **kw: module.logged.__setitem__(k, v)
    module.log_dict = lambda d, **kw: module.logged.update(d)
    return module


class Runner:
    """One model + AdamW; ``step()`` runs one training step on random ids.

    ``model`` is a native-mm ``LanguageModule`` (its ``compute_loss``), a native-mm
    ``Transformer`` or HF Chameleon; ``product_loss`` makes HF compute its own loss.
    """

    def __init__(self, name: str, model: torch.nn.Module, cfg: ModelConfig, batch: int,
                 bf16: bool, product_loss: bool = False):  # fmt: skip
        self.name, self.model, self.cfg, self.batch, self.bf16 = name, model, cfg, batch, bf16
        self.product_loss = product_loss
        params = [p for p in model.parameters() if p.requires_grad]
        # fused AdamW for both: native-mm's LanguageModule default, and HF Trainer's default
        # ("adamw_torch_fused") with torch >= 2.8
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=g)
        self.times: list[float] = []  # wall-clock seconds per step
        self.cpu_times: list[float] = []  # this process's CPU seconds per step
        self.losses: list[float] = []

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("native-mm"):
            return self.model(idx)
        return self.model(input_ids=idx, use_cache=False).logits

    def loss(self) -> torch.Tensor:
        idx, tgt = self.x[:, :-1], self.x[:, 1:].contiguous()
        if hasattr(self.model, "compute_loss"):  # native-mm LanguageModule
            mask = torch.ones_like(tgt, dtype=torch.bool)
            return self.model.compute_loss({"input": idx, "target": tgt, "mask": mask}, "train")
        if self.product_loss:  # HF's own loss (ForCausalLMLoss), targets already shifted
            return self.model(input_ids=idx, labels=tgt, shift_labels=tgt, use_cache=False).loss
        logits = self.logits(idx)
        return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())

    def step(self) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            loss = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)
        self.losses.append(loss.item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--skip-hf", action="store_true", help="native-mm only")
    p.add_argument("--compile", action="store_true", help="also time native-mm compiled")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    p.add_argument(
        "--loss",
        choices=["product", "plain"],
        default="product",
        help="product: each side's own training loss (native-mm LanguageModule.compute_loss "
        "with its per-modality metrics, HF labels=); plain: F.cross_entropy on both's logits",
    )
    p.add_argument(
        "--baseline-model",
        help="also time an older native_mm/model.py (e.g. `git show REV:native_mm/model.py "
        "> /tmp/model_old.py`) with the same weights, as native-mm-baseline",
    )
    p.add_argument(
        "--decode-ab",
        type=int,
        nargs="*",
        help="instead of training: time KV-cache decoding at these batch sizes, native-mm vs "
        "--baseline-model (6 alternating pairs, CPU time)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers,
                      n_head=args.heads, n_embd=args.d_model)  # fmt: skip
    if args.decode_ab:
        if not args.baseline_model:
            p.error("--decode-ab needs --baseline-model")
        old_module = load_model_module(args.baseline_model)
        new = build_native(cfg).eval()
        old = old_module.Transformer(old_module.ModelConfig(**cfg.to_dict())).eval()
        old.load_state_dict(new.state_dict())
        print(json.dumps(decode_ab(new, old, args.decode_ab, pairs=6)))
        return
    peak, peak_cpu = matmul_peak(args.threads)
    bf16 = args.precision == "bf16-mixed"
    product = args.loss == "product"
    first = native_module(cfg, compile=False) if product else build_native(cfg)
    runners = [Runner("native-mm", first, cfg, args.batch, bf16)]
    weights = (first.model if product else first).state_dict()
    if args.baseline_model:  # always the plain loss: an older model.py alone
        old = load_model_module(args.baseline_model)
        base = old.Transformer(old.ModelConfig(**cfg.to_dict()))
        base.load_state_dict(weights)
        runners.append(Runner("native-mm-baseline", base, cfg, args.batch, bf16))
    if args.compile:
        if product and args.compile_mode is None:
            compiled = native_module(cfg, compile=True)
            compiled.model.load_state_dict(weights)
        else:
            compiled = build_native(cfg)
            compiled.load_state_dict(weights)
            compiled.compile(mode=args.compile_mode)
        runners.append(Runner("native-mm-compiled", compiled, cfg, args.batch, bf16))
    if not args.skip_hf:
        hf = build_chameleon(cfg)
        runners.append(Runner("hf-chameleon", hf, cfg, args.batch, bf16, product_loss=product))
    flops_tok = Transformer.flops_per_token(first.model if product else first, args.seq)
    for _ in range(args.warmup):
        for r in runners:
            r.step()
    for r in runners:
        r.times.clear()
        r.cpu_times.clear()
    for i in range(args.steps):
        for r in runners if i % 2 == 0 else runners[::-1]:  # alternate the order too
            r.step()
    result = {
        "precision": args.precision,
        "loss": args.loss,
        "shape": {
            "d_model": args.d_model,
            "layers": args.layers,
            "heads": args.heads,
            "vocab": args.vocab,
            "seq": args.seq,
            "batch": args.batch,
        },  # fmt: skip
        "threads": args.threads,
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "matmul_peak_gflops_cpu_time": round(peak_cpu / 1e9, 2),
        "train_gflop_per_token": round(flops_tok / 1e9, 4),
    }
    for r in runners:
        t = sorted(r.times)[len(r.times) // 2]  # median step time
        tps = args.batch * args.seq / t
        tpc = args.batch * args.seq / sorted(r.cpu_times)[len(r.cpu_times) // 2]
        n = sum(p.numel() for p in r.model.parameters())
        result[r.name] = {
            "params": n,
            "step_s_median": round(t, 4),
            "step_s_min_max": [round(min(r.times), 4), round(max(r.times), 4)],
            "tokens_per_s": round(tps, 1),
            "achieved_gflops": round(tps * flops_tok / 1e9, 2),
            "fraction_of_peak": round(tps * flops_tok / peak, 3),
            # CPU time is what the step costs when the process is descheduled by other
            # jobs on an oversubscribed machine (1 thread: CPU time <= wall time)
            "tokens_per_cpu_s": round(tpc, 1),
            "achieved_gflops_cpu_time": round(tpc * flops_tok / 1e9, 2),
            "fraction_of_peak_cpu_time": round(tpc * flops_tok / peak_cpu, 3),
            "loss_first_last": [round(r.losses[0], 3), round(r.losses[-1], 3)],
        }
    if "hf-chameleon" in result:
        for r in runners[:-1]:
            result[f"speedup_{r.name}_vs_hf"] = round(
                result[r.name]["tokens_per_s"] / result["hf-chameleon"]["tokens_per_s"], 3
            )
            # the same ratio per interleaved step pair (HF step time / this step time):
            # its spread shows how much machine load moved between neighbouring steps
            paired = sorted(h / n for h, n in zip(runners[-1].times, r.times, strict=True))
            result[f"speedup_{r.name}_vs_hf_cpu_time"] = round(
                result[r.name]["tokens_per_cpu_s"] / result["hf-chameleon"]["tokens_per_cpu_s"], 3
            )
            result[f"speedup_{r.name}_vs_hf_paired_min_median_max"] = [
                round(paired[0], 3),
                round(paired[len(paired) // 2], 3),
                round(paired[-1], 3),
            ]
            paired = sorted(h / n for h, n in zip(runners[-1].cpu_times, r.cpu_times, strict=True))
            result[f"speedup_{r.name}_vs_hf_cpu_time_paired_min_median_max"] = [
                round(paired[0], 3),
                round(paired[len(paired) // 2], 3),
                round(paired[-1], 3),
            ]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
