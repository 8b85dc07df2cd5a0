"""The digits model's second stage: instruction tuning into a conversational model.

``native-mm sft --config recipes/digits_sft.yaml --base runs/digits [--out DIR] [--smoke]``
starts from the main job's run and, each stage skipped when its output exists:

    1. chat_set       the base tokenizer set plus the turn template's specials
                      (``<user>``, ``<assistant>``, ``<eot>``; every old id kept)
    2. conversations  multi-turn documents from the TRAIN split's media, e.g.
                      user: [image] what digit is this?  assistant: that is a seven.
                      user: now say it.                  assistant: [audio]
    3. shards         ``native-mm tokenize`` of the conversations with the chat set
    4. fit_*          ``fit --model.init_from`` the base model, once per variant: the
                      conversations alone, and with replay of the pretraining shards
    5. eval_*         on held-out writers and voices: the multi-turn directions (turn 1
                      answers, turn 2 refers back to turn 1) and the six base directions
                      (forgetting), as ``eval.json`` / ``eval.md`` per variant
    6. report         ``report.md``: base vs each variant, side by side

The second turn's answer must carry the digit of the first turn's prompt (the model sees
its own first answer, as in a real conversation), so it measures the conversation, not a
single mapping.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from native_mm import cli_help
from native_mm.apps.digits.corpus import CorpusConfig, _audio_pools, _image_pool
from native_mm.apps.digits.recipe import (
    deep_merge,
    eval_settings,
    generation_defaults,
    load_recipe,
    resolve,
)
from native_mm.apps.digits.wording import WORDS
from native_mm.io import atomic_write, read_yaml, write_json
from native_mm.vocab import CHAT_SPECIALS, EOS

SFT_KEYS = {"out", "seed", "threads", "base_recipe", "corpus", "conversations", "variants",
            "fit", "eval"}  # fmt: skip
KINDS = ("image-text-audio", "audio-text-image", "text-image-text")
ASK_IMAGE = ("what digit is this?", "which digit is this?", "what number is written here?")
ASK_AUDIO = ("what did you hear?", "which digit was said?", "what number is spoken?")
ANSWER = ("that is a {w}.", "it is a {w}.", "a {w}.")
SAY = ("now say it.", "say it out loud.", "and how does it sound?")
DRAW = ("now draw it.", "write it down.", "now write it.")
ASK_OWN = ("what digit did you draw?", "which digit is that?")
REQUEST = ("draw a {w}.", "please write a {w}.", "can you draw the digit {d}?")


def _fill(template: str, digit: int) -> str:
    return template.format(w=WORDS[digit], d=digit)


def conversation(kind: str, digit: int, image: str, heard: str, spoken: str,
                 r: random.Random) -> list[dict]:  # fmt: skip
    """One conversation's turns: ``image`` / ``heard`` (an audio prompt, possibly in
    recorded conditions) / ``spoken`` (a clean clip, what the model says) of ``digit``."""

    def turn(role: str, *segments: dict) -> dict:
        return {"role": role, "segments": list(segments)}

    answer = {"text": _fill(r.choice(ANSWER), digit)}
    if kind == "image-text-audio":
        return [turn("user", {"image": image}, {"text": r.choice(ASK_IMAGE)}),
                turn("assistant", answer), turn("user", {"text": r.choice(SAY)}),
                turn("assistant", {"audio": spoken})]  # fmt: skip
    if kind == "audio-text-image":
        return [turn("user", {"audio": heard}, {"text": r.choice(ASK_AUDIO)}),
                turn("assistant", answer), turn("user", {"text": r.choice(DRAW)}),
                turn("assistant", {"image": image})]  # fmt: skip
    return [turn("user", {"text": _fill(r.choice(REQUEST), digit)}),
            turn("assistant", {"image": image}), turn("user", {"text": r.choice(ASK_OWN)}),
            turn("assistant", answer)]  # fmt: skip


def build_conversations(base: CorpusConfig, per_kind: int, out: str | Path) -> dict:
    """``documents.jsonl`` of ``per_kind`` conversations of each kind over the TRAIN
    split's images and clips (written beside it, as the base corpus writes them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng, r = np.random.default_rng(base.seed + 1), random.Random(base.seed + 1)
    images = _image_pool(base, out, rng)
    audio = _audio_pools(base, out, rng)
    lines = []
    for kind in KINDS:
        for i in range(per_kind):
            d = i % 10
            turns = conversation(kind, d, r.choice(images[d]), r.choice(audio["audio"][d]),
                                 r.choice(audio["audio_clean"][d]), r)  # fmt: skip
            lines.append(json.dumps({"id": f"{kind}-{i}", "turns": turns}))
    with atomic_write(out / "documents.jsonl", "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"conversations": len(lines), "per_kind": per_kind, "kinds": list(KINDS)}


# ---- evaluation of the conversation ------------------------------------------------------
def _items(prompts: list, like: list) -> list:
    """Items with ``prompts``, each labelled as the item it was made from."""
    from native_mm.apps.digits.prompts import Item

    return [Item(p, it.digit) for p, it in zip(prompts, like, strict=True)]


def chat_eval(lm: Any, tokenizers: Any, cfg: Any, audio_root: str | None, judges: Any) -> dict:
    """Held-out media: each multi-turn direction's accuracy, the first turn answering the
    prompt and the second turn (after the model's own first answer) the same digit."""
    from native_mm.apps.digits.evaluation import judge, model_generator
    from native_mm.apps.digits.prompts import build_items

    vocab = tokenizers.vocab
    user, assistant, eot = (("special", s) for s in CHAT_SPECIALS)
    gen = model_generator(lm.model, tokenizers, cfg, lm.layout,
                          stop_tokens=(EOS, vocab.special_id("<eot>")))  # fmt: skip
    items = build_items(cfg, audio_root)
    result = {}
    for src, ask, then, dst in (("image", ASK_IMAGE[0], SAY[0], "audio"),
                                ("audio", ASK_AUDIO[0], DRAW[0], "image")):  # fmt: skip
        its = items[f"{src}->text"]
        labels = np.array([it.digit for it in its])
        first = [[user, *it.prompt, ("text", ask), eot, assistant] for it in its]

        answers = gen(f"{src}->text", _items(first, its))
        second = [[*p, ("text", a or ""), eot, user, ("text", then), eot, assistant]
                  for p, a in zip(first, answers, strict=True)]  # fmt: skip
        outputs = gen(f"text->{dst}", _items(second, its))
        for name, kind, got in ((f"chat {src}->text", "text", answers),
                                (f"chat {src}->text, then {dst}", dst, outputs)):  # fmt: skip
            pred = judge(judges, kind, got)
            shown = [str(a) for a in answers[:3]] if kind == "text" else []
            result[name] = {"accuracy": float((pred == labels).mean()), "n": len(its),
                            "examples": shown}  # fmt: skip
    return result


# ---- the stages ----------------------------------------------------------------------------
class SFT:
    """The stages of one SFT recipe from one base run into one output directory."""

    def __init__(self, recipe: dict, src: Path, base: Path, out: Path, log: Any = print):
        self.r, self.src, self.base, self.out, self.log = recipe, src, base, out, log
        self.base_recipe = load_recipe(resolve(recipe.get("base_recipe", "recipes/digits.yaml"),
                                               src))  # fmt: skip
        # variant -> weight of the replayed pretraining shards (the conversations weigh 1)
        self.variants = {k: float(v) for k, v in recipe.get("variants", {}).items()}
        self._judges = None

    def chat_set(self) -> Path:
        from native_mm.tokenizers.set_cli import main as set_main

        out = self.out / "tokenizers"
        if not (out / "manifest.json").is_file():
            set_main(["--from", str(self.base / "tokenizers" / "set"), "--add-specials",
                      ",".join(CHAT_SPECIALS), "--out", str(out)])  # fmt: skip
        return out

    def conversations(self) -> Path:
        out = self.out / "conversations"
        if not (out / "documents.jsonl").is_file():
            corpus = deep_merge(self.base_recipe.get("corpus", {}), self.r.get("corpus", {}))
            corpus = {k: v for k, v in corpus.items() if k != "docs"}
            stats = build_conversations(CorpusConfig(**corpus), int(self.r["conversations"]), out)
            self.log(f"  {stats['conversations']} conversations -> {out}")
        return out / "documents.jsonl"

    def shards(self) -> Path:
        from native_mm.layouts import Layout
        from native_mm.tokenizers.base import TokenizerSet
        from native_mm.training.shards import tokenize

        out = self.out / "shards"
        if not (out / "manifest.json").is_file():  # in the base shards' media layout
            base = json.loads((self.base / "shards" / "manifest.json").read_text())
            tokenize([self.conversations()], out, TokenizerSet.load(self.chat_set()),
                     docs_per_shard=2048, workers=0, log=self.log,
                     layout=Layout.from_manifest(base, "base shards"))  # fmt: skip
        return out

    def fit(self, variant: str) -> Path:
        from native_mm.training.cli import main as fit_main

        run = self.out / variant / "lm"
        ckpt = run / "checkpoints" / "last.ckpt"
        if (run / "done.json").is_file():
            return ckpt
        block = self.r.get("fit", {})
        base = read_yaml(self.base / "lm" / "lm_config.yaml")  # the base model's own arch
        sources = [{"path": str(self.shards()), "weight": 1.0}]
        if self.variants[variant]:
            sources.append({"path": str(self.base / "shards"), "weight": self.variants[variant]})
        cfg = deep_merge(deep_merge(base, block.get("overrides", {}) or {}), {
            "seed_everything": self.r.get("seed", 0), "run": {"out_dir": str(run)},
            "model": {"init_from": str(self.base / "lm" / "checkpoints" / "last.ckpt"),
                      "code_vectors": None},  # the weights come from the base model
            "data": {"sources": sources}})  # fmt: skip
        run.mkdir(parents=True, exist_ok=True)
        with atomic_write(run / "lm_config.yaml", "w") as f:
            f.write(yaml.safe_dump(cfg, sort_keys=False))
        argv = ["--config", str(run / "lm_config.yaml")]
        fit_main(argv + (["--ckpt_path", str(ckpt)] if ckpt.is_file() else []))
        self.write_generation_config(run)
        write_json(run / "done.json", {"checkpoint": str(ckpt)})
        return ckpt

    def write_generation_config(self, run: Path) -> Path:
        """The eval's sampling settings as the model's defaults (as the main job does)."""
        from native_mm.generation_config import save

        cfg, _ = eval_settings(self.base_recipe, **self.r.get("eval", {}))
        return save(generation_defaults(cfg), run)

    def evaluate(self, variant: str) -> dict:
        """Six base directions (``eval.json``) and the conversation (``chat.json``)."""
        from native_mm.apps.digits.evaluation import Judges, evaluate_checkpoint, read_result
        from native_mm.pretrained import load

        out = self.out / variant / "eval"
        cfg, audio_root = eval_settings(self.base_recipe, **self.r.get("eval", {}))
        if not (out / "chat.json").is_file():
            ckpt = self.fit(variant)
            self._judges = self._judges or Judges(audio_root)
            evaluate_checkpoint(ckpt, self.chat_set(), out, cfg, audio_root, progress=False,
                                judges=self._judges)  # fmt: skip
            lm, tokenizers = load(ckpt, self.chat_set())
            chat = chat_eval(lm, tokenizers, cfg, audio_root, self._judges)
            write_json(out / "chat.json", chat, checksum=True)
        return {
            "base": read_result(out)["directions"],
            "chat": json.loads((out / "chat.json").read_text()),
        }

    def run(self) -> dict:
        results = {v: self.evaluate(v) for v in self.variants}
        base = json.loads((self.base / "eval" / "eval.json").read_text())["directions"]
        lines = ["| direction | base model | " + " | ".join(self.variants) + " |",
                 "| --- | --- |" + " --- |" * len(self.variants)]  # fmt: skip
        for name in next(iter(results.values()))["chat"]:
            cells = [f"{results[v]['chat'][name]['accuracy']:.1%}" for v in self.variants]
            lines.append(f"| {name} | — | " + " | ".join(cells) + " |")
        for d, row in base.items():
            cells = [f"{results[v]['base'][d]['accuracy']:.1%}" for v in self.variants]
            lines.append(f"| {d} | {row['accuracy']:.1%} | " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        with atomic_write(self.out / "report.md", "w") as f:
            f.write(table)
        write_json(self.out / "report.json", results)
        self.log(table)
        return results


def main(argv: list[str] | None = None, prog: str = "native-mm sft") -> int:
    """``native-mm sft --config RECIPE --base RUN [--out DIR] [--smoke]``."""
    p = cli_help.parser(prog, (__doc__ or "").split("\n")[0])
    p.add_argument("--config", required=True, help="the SFT recipe (recipes/digits_sft.yaml)")
    p.add_argument("--base", required=True, help="the main job's run directory (runs/digits)")
    p.add_argument("--out", help="output directory (default: the recipe's out)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the recipe's smoke block")
    args = p.parse_args(argv)
    recipe = load_recipe(args.config, smoke=args.smoke, known=SFT_KEYS)
    out = Path(args.out or recipe.get("out", "runs/digits_sft"))
    SFT(recipe, Path(args.config), Path(args.base), out).run()
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return 0
