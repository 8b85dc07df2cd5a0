"""``native-mm`` console script: the only place that wires every part together.

Each verb lives in the module that implements it, as ``main(argv) -> int | None``;
this file only dispatches, importing the verb's module lazily so that
``native-mm --help`` stays fast and one broken extra never breaks another verb.

Applications add verbs without the library importing them: an entry point in the
``native_mm.apps`` group names a dict shaped like :data:`VERBS` (the digits job's
``run`` and ``eval`` come from ``native_mm.apps.digits.verbs``).
"""

from __future__ import annotations

import importlib
import os
import sys

from native_mm import quiet

APP_GROUP = "native_mm.apps"

# verb words -> ("module:function", one-line help). Longest match wins.
VERBS: dict[tuple[str, ...], tuple[str, str]] = {
    ("tokenizer", "train", "audio"): (
        "native_mm.tokenizers.audio_train:train_main",
        "train the EnCodec audio tokenizer from a spec YAML",
    ),
    ("tokenizer", "eval", "audio"): (
        "native_mm.tokenizers.audio_eval:eval_main",
        "audio tokenizer metrics (SI-SNR, mel distance, digit accuracy kept) as JSON",
    ),
    ("tokenizer", "set"): (
        "native_mm.tokenizers.set_cli:main",
        "the shared vocabulary + manifest from the tokenizers you name (any modalities)",
    ),
    ("tokenize",): (
        "native_mm.training.tokenize_cli:main",
        "documents JSONL + tokenizer set -> packed token shards with a manifest",
    ),
    ("fit",): (
        "native_mm.training.cli:main",
        "train the transformer from a recipe YAML (LightningCLI; --ckpt_path last resumes)",
    ),
    ("validate",): (
        "native_mm.documents:main",
        "check a documents JSONL file and report every bad record",
    ),
    ("tokenizer", "train", "text"): (
        "native_mm.tokenizers.text:train_main",
        "train the sentencepiece BPE text tokenizer from a spec YAML",
    ),
    ("tokenizer", "train", "image"): (
        "native_mm.tokenizers.image_train:train_main",
        "train the image VQ-GAN tokenizer from a spec YAML",
    ),
    ("tokenizer", "eval", "image"): (
        "native_mm.tokenizers.image_eval:eval_main",
        "image tokenizer metrics (PSNR, SSIM, codebook usage) as JSON",
    ),
    ("export",): (
        "native_mm.release:main",
        "a run or checkpoint -> a self-contained model directory (weights, tokenizers, card)",
    ),
    ("serve",): (
        "native_mm.serve:main",
        "serve a model directory over HTTP: streamed answers, health and model info",
    ),
    ("generate",): (
        "native_mm.generate_cli:main",
        "generate text, an image or audio from an interleaved prompt (checkpoint + tokenizers)",
    ),
}


def all_verbs() -> dict[tuple[str, ...], tuple[str, str]]:
    """The library's verbs plus those of every installed application (entry points)."""
    from importlib.metadata import entry_points

    verbs = dict(VERBS)
    for ep in entry_points(group=APP_GROUP):
        try:
            app_verbs = ep.load()
        except Exception as e:  # a broken application must not break the library's verbs
            print(f"native-mm: warning: application {ep.name!r} not loaded: {e}", file=sys.stderr)
            continue
        verbs.update({tuple(k): tuple(v) for k, v in app_verbs.items() if tuple(k) not in VERBS})
    return verbs


def usage(verbs: dict[tuple[str, ...], tuple[str, str]] | None = None) -> str:
    verbs = verbs if verbs is not None else all_verbs()
    lines = ["usage: native-mm VERB [args...]", "", "verbs:"]
    width = max(len(" ".join(v)) for v in verbs)
    for words, (_, help_) in sorted(verbs.items()):
        lines.append(f"  {' '.join(words):<{width}}  {help_}")
    lines.append(
        "\nRun `native-mm VERB --help` for a verb's arguments; `native-mm --verbose VERB`"
        " also shows the third-party messages silenced by default."
    )
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    """An error's message on one line. An error re-raised from a DataLoader worker carries
    the worker's whole traceback; its last line is the message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, sep, rest = last.partition(": ")
        text = rest if sep and name.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else last
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--verbose"]:  # every third-party line too (see native_mm/quiet.py)
        argv.pop(0)
        os.environ["NATIVE_MM_VERBOSE"] = "1"
    if not quiet.verbose():
        quiet.install()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from native_mm import __version__

        print(__version__)
        return 0
    verbs = all_verbs()
    for n in range(len(argv), 0, -1):
        if tuple(argv[:n]) in verbs:
            target = verbs[tuple(argv[:n])][0]
            module, func = target.split(":")
            prog = "native-mm " + " ".join(argv[:n])
            try:
                rc = getattr(importlib.import_module(module), func)(argv[n:], prog=prog)
            except (ValueError, OSError) as e:
                # Errors a user can cause carry the file/record in their message; an
                # OSError names its file too ("[Errno 21] Is a directory: 'x'").
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return 1
            return int(rc or 0)
    print(f"native-mm: unknown verb {' '.join(argv[:3])!r}\n\n{usage(verbs)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
