"""``native-mm export``: a run directory or checkpoint -> a self-contained model directory,
the thing a user releases and anyone loads with :func:`native_mm.pretrained.from_pretrained`::

    MODEL/
      config.json, vocab.json, model.safetensors   (+ NAME.sha256.json)  the decoder
      tokenizers/                                  the tokenizer set it reads
      generation_config.json                       its tuned sampling settings, if any
      README.md                                    a model card: sizes, evaluation, usage
      transformers/                                with --transformers (native_mm.hf_export)

A run directory is found by its files: ``lm/checkpoints/last.ckpt`` or
``checkpoints/last.ckpt`` (``native-mm run`` / ``fit``), the tokenizer set in
``tokenizers/`` or ``tokenizers/set/`` and the evaluation table in ``eval/eval.md`` at the
run's root.
"""

from __future__ import annotations

import json
from pathlib import Path

from native_mm import cli_help
from native_mm.checkpoint import (
    SHARDED_META,
    CheckpointError,
    Pretrained,
    export_model,
    load_checkpoint,
)
from native_mm.io import atomic_write

TOKENIZERS = "tokenizers"  # the tokenizer set's folder inside a model directory
CARD = "README.md"


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a model directory, or a run directory's last checkpoint."""
    path = Path(path)
    if path.is_file() or (path / "config.json").is_file() or (path / SHARDED_META).is_file():
        return path
    for candidate in ("lm/checkpoints/last.ckpt", "checkpoints/last.ckpt"):
        if (path / candidate).exists():  # a file, or a sharded (FSDP) checkpoint's folder
            return path / candidate
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file, model or run directory")
    raise CheckpointError(
        f"{path}: neither a checkpoint, a model directory nor a run "
        "directory (no lm/checkpoints/last.ckpt or checkpoints/last.ckpt)"
    )


def _run_file(ckpt: Path, name: str) -> Path | None:
    """``name`` in the checkpoint's own directory or up to three levels above it."""
    base = ckpt if ckpt.is_dir() else ckpt.parent
    for folder in (base, *list(base.parents)[:3]):
        if (folder / name).exists():
            return folder / name
    return None


def find_tokenizers(ckpt: str | Path) -> Path | None:
    """The tokenizer set of a model directory or run: ``tokenizers/manifest.json``, or
    ``tokenizers/set/manifest.json`` (``native-mm run``)."""
    for name in (f"{TOKENIZERS}/manifest.json", f"{TOKENIZERS}/set/manifest.json"):
        found = _run_file(Path(ckpt), name)
        if found:
            return found.parent
    return None


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def model_card(
    pretrained: Pretrained, name: str, eval_table: str | None, defaults: dict | None
) -> str:
    """The model directory's README: what the model is, how it scored, how to run it."""
    cfg, model = pretrained.model.config, pretrained.model
    arch = [
        ("parameters", f"{model.num_params() / 1e6:.2f} M"),
        ("layers x width", f"{cfg.n_layer} x {cfg.n_embd}"),
        ("heads (key/value heads)", f"{cfg.n_head} ({cfg.n_kv_head})"),
        ("context", f"{cfg.block_size} tokens"),
        ("vocabulary", pretrained.vocab.summary()),
        ("trained for", f"{pretrained.steps} steps" if pretrained.steps else "unknown"),
    ]
    sampling = "the library's defaults (no generation_config.json)"
    if defaults:
        lines = [
            f"| {m} | " + ", ".join(f"{k}={v}" for k, v in s.items()) + " |"
            for m, s in defaults.items()
            if isinstance(s, dict)
        ]
        sampling = "\n".join(["| output | settings |", "| --- | --- |", *lines])
    evaluation = eval_table.strip() if eval_table else "Not evaluated when it was exported."
    return f"""# {name}

A native early-fusion multimodal model made with native-mm: text, images and audio are
tokens of one vocabulary, and one decoder-only transformer reads and writes them all.

## Model

{_table(arch)}

## Evaluation

{evaluation}

## Sampling defaults

`generate` and the Python API use these unless told otherwise:

{sampling}

## Use

```bash
native-mm generate --ckpt {name} --text "..." --output-modality image --out out/
```

```python
from native_mm.pretrained import from_pretrained

model = from_pretrained("{name}")
answer = model.generate(["..."], output="text")
print(answer.outputs)
```

## Files

`model.safetensors` (the decoder), `config.json` (its sizes and media layouts), `vocab.json`
(the vocabulary and each tokenizer's fingerprint), `{TOKENIZERS}/` (the tokenizer set),
`generation_config.json` (sampling defaults); every file but the tokenizers has its sha256
in `NAME.sha256.json` beside it, checked on load.
"""


def export(
    source: str | Path,
    out: str | Path,
    tokenizers: str | Path | None = None,
    eval_table: str | Path | None = None,
    transformers: bool = False,
) -> Path:
    """Write the model directory of a run directory, checkpoint or model directory.

    Raises:
        CheckpointError: no tokenizer set given or found, a checkpoint that does not match
            it, or (``transformers``) a model with no exact transformers form.
    """
    from native_mm import generation_config
    from native_mm.tokenizers.base import TokenizerSet

    ckpt = find_checkpoint(source)
    tok_dir = Path(tokenizers) if tokenizers else find_tokenizers(ckpt)
    if tok_dir is None:
        raise CheckpointError(f"{source}: no tokenizer set beside it; give --tokenizers DIR")
    tset = TokenizerSet.load(tok_dir)
    pretrained = load_checkpoint(ckpt, tset)
    if transformers:  # refused (per-head QK-norm gains) before anything is written
        from native_mm import hf_export

        hf_weights = hf_export.hf_state(pretrained.model)
    out = export_model(pretrained, out, tset.manifest())
    if tok_dir.resolve() != (out / TOKENIZERS).resolve():
        tset.save(out / TOKENIZERS)
    found = generation_config.find(ckpt)
    defaults = generation_config.load(found) if found else None
    if defaults:  # the model's sampling settings travel with it
        generation_config.save(defaults, out)
    table = Path(eval_table) if eval_table else _run_file(ckpt, "eval/eval.md")
    text = table.read_text(encoding="utf-8") if table else None
    with atomic_write(out / CARD, "w") as f:
        f.write(model_card(pretrained, out.name, text, defaults and defaults.to_dict()))
    if transformers:
        hf_export.write_transformers(hf_weights, pretrained.model.config, out / hf_export.SUBDIR)
    return out


def main(argv: list[str] | None = None, prog: str = "native-mm export") -> int:
    """``native-mm export --ckpt RUN_OR_CKPT --out DIR``: a self-contained model directory."""
    ap = cli_help.parser(prog, (__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--ckpt",
        required=True,
        help="a run directory (native-mm run/fit), a checkpoint or a model directory",
    )
    ap.add_argument("--tokenizers", help="the tokenizer set (default: the run's tokenizers/)")
    ap.add_argument(
        "--eval-table", help="a Markdown table for the model card (default: the run's eval/eval.md)"
    )
    ap.add_argument("--out", required=True, help="the model directory to write")
    ap.add_argument(
        "--transformers",
        action="store_true",
        help="also write OUT/transformers/: the decoder as a Qwen3ForCausalLM "
        "(LlamaForCausalLM without QK-norm) that transformers loads",
    )
    args = ap.parse_args(argv)
    out = export(args.ckpt, args.out, args.tokenizers, args.eval_table, args.transformers)
    files = sorted(p.name for p in out.iterdir() if not p.name.endswith(".sha256.json"))
    if args.transformers:
        hf = json.loads((out / "transformers" / "config.json").read_text())
        files[files.index("transformers")] += f" ({hf['architectures'][0]})"
    print(f"exported to {out}: {', '.join(files)}")
    return 0
