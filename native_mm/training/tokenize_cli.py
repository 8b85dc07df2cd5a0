"""``native-mm tokenize``: documents (or tars, Parquet files, datasets folders) + a tokenizer
set -> packed token shards, in one process, as one of N parts, or as Dask tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from native_mm import cli_help
from native_mm.layouts import AudioFrameMajor, Layout
from native_mm.samples_in import DEFAULT_ORDERS
from native_mm.training.shards import tokenize

DESCRIPTION = "Documents + a tokenizer set -> packed, checksummed token shards with a manifest."


def recipe(path: str, known: set[str], error: Any) -> dict:
    """A tokenize recipe (YAML) -> argparse defaults: ``orders`` as a string or a mapping
    ``{"text,image": 0.7, ...}``, ``columns`` as a string or ``{text: COL, image: COL}``."""
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        error(f"--config {path}: {e}")
    if not isinstance(cfg, dict):
        error(f"--config {path}: a mapping of options, not {type(cfg).__name__}")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - known - {"help"})
    if unknown:
        error(f"--config {path}: unknown option(s) {unknown}; known: {sorted(known)}")
    if isinstance(cfg.get("orders"), dict):
        cfg["orders"] = ";".join(f"{k}={v}" for k, v in cfg["orders"].items())
    if isinstance(cfg.get("columns"), dict):
        cfg["columns"] = ",".join(f"{k}={v}" for k, v in cfg["columns"].items())
    if isinstance(cfg.get("inputs"), str):
        cfg["inputs"] = [cfg["inputs"]]
    return cfg


def main(argv: list[str] | None = None, prog: str = "native-mm tokenize") -> int:
    p = cli_help.parser(prog, DESCRIPTION)
    p.add_argument(
        "--config", default=None,
        help="a YAML recipe with any of these options (inputs, tokenizers, out, orders, "
        "columns, docs_per_shard, ...); the command line overrides it",
    )  # fmt: skip
    p.add_argument(
        "inputs", nargs="*",
        help="documents JSONL file(s), WebDataset .tar shards, Parquet files or Hugging Face "
        "datasets save_to_disk folders",
    )  # fmt: skip
    p.add_argument(
        "--orders", default=DEFAULT_ORDERS,
        help="how a tar's samples or a dataset's rows become documents: kinds in order, "
        "';'-separated, with optional weights (e.g. text,image=0.7;image,text=0.3 or "
        "text,audio;audio,text)",
    )  # fmt: skip
    p.add_argument(
        "--columns", default=None,
        help="a dataset's columns when the guess is wrong: text=COL,image=COL,audio=COL",
    )  # fmt: skip
    p.add_argument("--tokenizers", help="tokenizer set directory (required)")
    p.add_argument("--out", help="output shard directory (required)")
    p.add_argument("--docs-per-shard", type=int, default=512, help="documents per shard file")
    p.add_argument("--workers", type=int, default=2, help="encoding processes (0 = inline)")
    p.add_argument(
        "--audio-levels", type=int, default=None,
        help="RVQ levels per audio frame in the sequences (default: all of the vocabulary's)",
    )  # fmt: skip
    p.add_argument(
        "--max-audio-seconds", type=float, default=None,
        help="skip longer audio (counted as MediaTooLong; default: the tokenizer's, 3600)",
    )  # fmt: skip
    p.add_argument(
        "--part", default=None, metavar="K/N",
        help="encode only part K of N (shards i with i mod N = K; e.g. a Slurm array task); "
        "no manifest: run --merge once every part is done",
    )  # fmt: skip
    p.add_argument("--merge", action="store_true", help="write the manifest from the parts' shards")
    p.add_argument(
        "--dask", default=None, metavar="ADDRESS",
        help="run the parts as Dask tasks, then merge: a scheduler (tcp://host:8786) or local:N "
        "(N worker processes here); needs the scale extra",
    )  # fmt: skip
    p.add_argument("--parts", type=int, default=None, help="with --dask: parts (default: workers)")
    pre, _ = p.parse_known_args(argv)
    if pre.config:
        p.set_defaults(**recipe(pre.config, {a.dest for a in p._actions}, p.error))
    args = p.parse_args(argv)
    for need in ("inputs", "tokenizers", "out"):
        if not getattr(args, need):
            p.error(f"give {need} on the command line or in --config")
    layout = None
    if args.audio_levels is not None:
        layout = Layout(audio=AudioFrameMajor(args.audio_levels))
    part = None
    if args.part is not None:
        k, _, n = args.part.partition("/")
        if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
            p.error(f"--part {args.part}: give K/N with 0 <= K < N, e.g. 3/16")
        part = (int(k), int(n))
    kwargs = dict(docs_per_shard=args.docs_per_shard, layout=layout,
                  max_audio_seconds=args.max_audio_seconds, orders=args.orders,
                  columns=args.columns)  # fmt: skip
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.dask:
        from native_mm.training.tokenize_dask import tokenize_on_dask

        out = tokenize_on_dask(args.inputs, args.out, args.tokenizers, args.dask, args.parts,
                               log=log, **kwargs)  # fmt: skip
    else:
        out = tokenize(args.inputs, args.out, args.tokenizers, workers=args.workers, log=log,
                       part=part, merge=args.merge, **kwargs)  # fmt: skip
    keys = ("part", "shards", "documents", "tokens") if part else ("documents", "tokens",
                                                                    "modality_tokens")  # fmt: skip
    print(json.dumps({k: out[k] for k in keys}))
    return 0
