"""Before/after throughput of two source trees, in one run, alternating.

Runs this folder's ``bench_training.py`` and ``bench_generation.py`` (native-mm only)
against the ``native_mm`` package of each tree in turn (``PYTHONPATH``), ``--rounds``
times, A B B A ..., so slow phases of a shared machine hit both trees alike. Prints one
Markdown table (best of the rounds: training tokens/s eager and compiled, generation
tokens/s per batch) with the after/before ratio.

    git worktree add /tmp/before <rev>
    nice -n -5 python benchmarks/before_after.py --before /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(tree: Path, script: str, args: list[str]) -> dict:
    """One benchmark against ``tree``'s package; its last JSON line."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}"}
    out = subprocess.run([sys.executable, str(HERE / script), *args], env=env, check=True,
                         capture_output=True, text=True, cwd=tree).stdout  # fmt: skip
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def metrics(train: dict, gen: dict) -> dict[str, float]:
    out = {
        "training tokens/s, eager": train["native-mm"]["tokens_per_s"],
        "training tokens/s, compiled": train["native-mm-compiled"]["tokens_per_s"],
    }
    for r in gen["rows"]:
        if "tokens_per_s" in r:
            out[f"generation tokens/s, batch {r['batch']}, {r['engine']}"] = r["tokens_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the older tree (a git worktree)")
    p.add_argument("--after", default=str(HERE.parent), help="the newer tree (this one)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--new-tokens", type=int, default=128)
    a = p.parse_args()
    train_args = ["--skip-hf", "--compile", "--steps", str(a.steps), "--warmup", "2",
                  "--threads", str(a.threads)]  # fmt: skip
    gen_args = ["--skip-hf", "--threads", "1", "--repeats", "3", "--new-tokens",
                str(a.new_tokens), "--no-cache-batches"]  # fmt: skip
    trees = {"before": Path(a.before).resolve(), "after": Path(a.after).resolve()}
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for i in range(a.rounds):
        for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
            m = metrics(run(trees[name], "bench_training.py", train_args),
                        run(trees[name], "bench_generation.py", gen_args))  # fmt: skip
            print(json.dumps({"round": i, "tree": name, **m}), flush=True)
            for k, v in m.items():
                best[name][k] = max(best[name].get(k, 0.0), v)
    print("\n| measure (best of rounds) | before | after | after / before |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in best["before"].items():
        w = best["after"].get(k, float("nan"))
        print(f"| {k} | {v:,.0f} | {w:,.0f} | {w / v:.3f} |")


if __name__ == "__main__":
    main()
