"""The main job in one command: corpus -> tokenizers -> shards -> transformer -> eval.

``native-mm run --config recipes/digits.yaml [--out runs/digits] [--smoke]`` runs, in turn:

    1. corpus      the built-in digits corpus (:mod:`native_mm.apps.digits.corpus`)
    2. text        the sentencepiece BPE, trained on the corpus' captions
    3. image       the image VQ-GAN (the shipped ``tokenizers/image/digits`` by default)
    4. audio       the audio EnCodec (the shipped ``tokenizers/audio/speech8k`` by default)
    5. tokenizers  the TokenizerSet + vocabulary manifest
    6. shards      ``native-mm tokenize`` of the corpus into packed shards
    7. fit         ``native-mm fit`` (LightningCLI) with the recipe's LM config
    8. eval        ``native-mm eval`` on the held-out split, six directions

Every stage is skipped when its output already exists (an interrupted fit resumes from
its last checkpoint), so re-running the command finishes the job. Each stage logs a line
when it starts and ends; ``report.json`` / ``report.md`` in the run directory hold the
wall time per stage and the accuracy table.

The recipe YAML has one block per stage (see ``recipes/digits.yaml``); a ``smoke:`` block
is merged over it with ``--smoke`` (tiny sizes, a few steps: the CI test).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from native_mm import cli_help
from native_mm.apps.digits.recipe import (
    REPO,
    RecipeError,
    deep_merge,
    eval_settings,
    generation_defaults,
    load_recipe,
    resolve,
)
from native_mm.io import atomic_write, read_yaml, write_json

STAGES = ("corpus", "text", "image", "audio", "tokenizers", "shards", "fit", "eval")


@dataclasses.dataclass
class StageResult:
    """What one stage did."""

    name: str
    status: str  # "ran" | "skipped" | "resumed"
    seconds: float
    output: str


class Pipeline:
    """Runs the stages of one recipe into one run directory."""

    def __init__(self, recipe: dict, out: str | Path | None = None, log: Callable = print):
        self.r = recipe
        self.src = recipe["_path"]
        self.out = Path(out or recipe.get("out", "runs/digits"))
        self.log = log
        self.results: list[StageResult] = []
        tk = recipe.get("tokenizers", {})
        self.paths = {
            "corpus": self.out / "corpus",
            "text": self.out / "tokenizers" / "text",
            "image": self._tok_dir(tk.get("image", {}), "image"),
            "audio": self._tok_dir(tk.get("audio", {}), "audio"),
            "tokenizers": self.out / "tokenizers" / "set",
            "shards": self.out / "shards",
            "fit": self.out / "lm",
            "eval": self.out / "eval",
        }

    def _tok_dir(self, block: dict, modality: str) -> Path:
        d = block.get("dir") or ""
        return resolve(d, self.src) if d else self.out / "tokenizers" / modality

    # ---- stage bodies -----------------------------------------------------------------
    def corpus(self) -> Path | None:
        from native_mm.apps.digits.corpus import CorpusConfig, build_corpus

        out = self.paths["corpus"]
        if (out / "corpus.json").is_file():
            return out
        cfg = CorpusConfig(**{"seed": self.r.get("seed", 0), **self.r.get("corpus", {})})
        build_corpus(cfg, out, progress=True)
        return None

    def text(self) -> Path | None:
        from native_mm.tokenizers.text import train_main

        out = self.paths["text"]
        if (out / "config.json").is_file():
            return out
        block = self.r.get("tokenizers", {}).get("text", {})
        spec = resolve(block.get("spec", "tokenizers/text/digits.yaml"), self.src)
        argv = ["--config", str(spec), "--out", str(out)]
        argv += ["--input", str(self.paths["corpus"] / "documents.jsonl")]
        train_main(argv + [str(o) for o in block.get("overrides", [])])
        return None

    def _media_tokenizer(self, modality: str) -> Path | None:
        out = self.paths[modality]
        if (out / "config.json").is_file() and (out / "weights.pt").is_file():
            return out
        block = self.r.get("tokenizers", {}).get(modality, {})
        spec = resolve(block["spec"], self.src)
        if modality == "image":
            from native_mm.tokenizers.image_train import train_main
        else:
            from native_mm.tokenizers.audio_train import train_main
        train_main(["--config", str(spec), "--out", str(out)] + [str(o) for o in
                   block.get("overrides", [])])  # fmt: skip
        return None

    def image(self) -> Path | None:
        return self._media_tokenizer("image")

    def audio(self) -> Path | None:
        return self._media_tokenizer("audio")

    def tokenizers(self) -> Path | None:
        from native_mm.tokenizers.base import TokenizerSet, tokenizer_class

        out = self.paths["tokenizers"]
        if (out / "manifest.json").is_file():
            return out
        toks = {m: tokenizer_class(m).load(self.paths[m]) for m in ("text", "image", "audio")}
        grid = int(self.r.get("tokenizers", {}).get("image_max_grid", 8))
        tset = TokenizerSet(**toks, image_max_grid=grid)
        tset.save(out)
        self.log(f"  vocabulary: {tset.vocab.summary()}")
        return None

    def shards(self) -> Path | None:
        from native_mm.training.tokenize_cli import main as tokenize_main

        out = self.paths["shards"]
        if (out / "manifest.json").is_file():
            return out
        block = self.r.get("tokenize", {})
        argv = [str(self.paths["corpus"] / "documents.jsonl"), "--tokenizers",
                str(self.paths["tokenizers"]), "--out", str(out),
                "--workers", str(block.get("workers", 2)),
                "--docs-per-shard", str(block.get("docs_per_shard", 2048))]  # fmt: skip
        if block.get("audio_levels"):
            argv += ["--audio-levels", str(block["audio_levels"])]
        tokenize_main(argv)
        return None

    def lm_config(self) -> Path:
        """Write the resolved LightningCLI config of the fit stage -> its path."""
        block = self.r.get("fit", {})
        base_path = resolve(block.get("recipe", "recipes/digits_lm.yaml"), self.src)
        base = read_yaml(base_path, RecipeError, f"fit.recipe of {self.src}")
        cfg = deep_merge(base, block.get("overrides", {}) or {})
        run_dir = self.paths["fit"]
        cfg = deep_merge(cfg, {
            "seed_everything": self.r.get("seed", 0),
            "run": {"out_dir": str(run_dir)},
            "data": {"sources": [{"path": str(self.paths["shards"]), "weight": 1.0}]},
        })  # fmt: skip
        if self.r.get("threads"):
            cfg = deep_merge(cfg, {"run": {"threads": int(self.r["threads"])}})
        if block.get("code_vectors"):  # media embeddings start from the tokenizers' latents
            from native_mm.tokenizers.base import CODE_VECTORS

            vectors = self.paths["tokenizers"] / CODE_VECTORS
            cfg = deep_merge(cfg, {"model": {"code_vectors": str(vectors)}})
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "lm_config.yaml"
        with atomic_write(path, "w") as f:
            f.write(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def checkpoint(self) -> Path:
        return self.paths["fit"] / "checkpoints" / "last.ckpt"

    def fit(self) -> Path | None:
        from native_mm.training.cli import main as fit_main

        done = self.paths["fit"] / "done.json"
        if done.is_file() and self.checkpoint().is_file():
            return self.paths["fit"]
        config = self.lm_config()
        argv = ["--config", str(config)]
        if self.checkpoint().is_file():
            self.log(f"  resuming from {self.checkpoint()}")
            argv += ["--ckpt_path", str(self.checkpoint())]
        fit_main(argv)
        if not self.checkpoint().is_file():
            raise RecipeError(f"fit finished without writing {self.checkpoint()}")
        self.write_generation_config()

        write_json(done, {"checkpoint": str(self.checkpoint())})
        return None

    def write_generation_config(self) -> Path:
        """``lm/generation_config.json``: the recipe's eval sampling, the model's defaults."""
        from native_mm.generation_config import save

        return save(generation_defaults(eval_settings(self.r)[0]), self.paths["fit"])

    def eval(self) -> Path | None:
        from native_mm.apps.digits.evaluation import evaluate_checkpoint, read_result

        out = self.paths["eval"]
        if (out / "eval.json").is_file():
            try:
                read_result(out)  # checked against eval.json.sha256.json
                return out
            except ValueError as e:
                self.log(f"  {e}; evaluating again")
        cfg, audio_root = eval_settings(self.r)
        self.write_generation_config()
        evaluate_checkpoint(self.checkpoint(), self.paths["tokenizers"], out, cfg, audio_root)
        return None

    # ---- driver ---------------------------------------------------------------------
    def run(self, stages: tuple[str, ...] = STAGES) -> dict:
        """Run ``stages`` in order -> the report (also written to the run directory)."""
        import torch

        if self.r.get("threads"):
            torch.set_num_threads(int(self.r["threads"]))
        self.out.mkdir(parents=True, exist_ok=True)
        t_all = time.perf_counter()
        for k, name in enumerate(stages, 1):
            self.log(f"[{k}/{len(stages)}] {name} ...", flush=True)
            t0 = time.perf_counter()
            existed = getattr(self, name)()
            dt = time.perf_counter() - t0
            status = "skipped" if existed is not None else "ran"
            res = StageResult(name, status, round(dt, 1), str(existed or self.paths[name]))
            self.results.append(res)
            word = f"skipped: {existed} exists" if existed is not None else f"done in {dt:.1f}s"
            self.log(f"[{k}/{len(stages)}] {name} {word}", flush=True)
        report = self.report(time.perf_counter() - t_all)
        return report

    def report(self, total: float) -> dict:

        rep: dict[str, Any] = {
            "recipe": self.src,
            "out": str(self.out),
            "stages": [dataclasses.asdict(r) for r in self.results],
            "total_seconds": round(total, 1),
        }
        lines = ["| stage | status | seconds | output |", "| --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.name} | {r.status} | {r.seconds} | {r.output} |")
        lines.append(f"| **total** | | {rep['total_seconds']} | |")
        md = "\n".join(lines) + "\n"
        eval_json = self.paths["eval"] / "eval.json"
        if eval_json.is_file():
            from native_mm.apps.digits.evaluation import markdown_table, read_result

            result = read_result(eval_json)  # a corrupted eval.json is an error naming it
            rep["eval"] = {d: r["accuracy"] for d, r in result["directions"].items()}
            rep["judges"] = result.get("judges", {})
            md += "\n" + markdown_table(result)
        write_json(self.out / "report.json", rep)
        with atomic_write(self.out / "report.md", "w") as f:
            f.write(md)
        self.log("\n" + md, flush=True)
        return rep


def _log(*args: Any, flush: bool = True) -> None:
    print(*args, flush=flush)


def main(argv: list[str] | None = None, prog: str = "native-mm run") -> int:
    """``native-mm run --config recipes/digits.yaml [--out DIR] [--smoke] [--stages ...]``."""
    p = cli_help.parser(prog, __doc__)
    p.add_argument("--config", default=str(REPO / "recipes" / "digits.yaml"), help="recipe")
    p.add_argument("--out", default=None, help="run directory (default: the recipe's `out`)")
    p.add_argument("--smoke", action="store_true", help="merge the recipe's smoke: block")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="run only these stages (in pipeline order)")  # fmt: skip
    args = p.parse_args(argv)
    recipe = load_recipe(args.config, smoke=args.smoke)
    stages = tuple(s for s in STAGES if s in args.stages)
    Pipeline(recipe, args.out, log=_log).run(stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
