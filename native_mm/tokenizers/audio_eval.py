"""``native-mm tokenizer eval audio``: SI-SNR, mel distance and the accuracy an independent
judge keeps, on a source's splits, a folder of audio or a documents JSONL."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from native_mm import cli_help, sources
from native_mm.tokenizers.audio import AudioTokenizer, convert, read_audio
from native_mm.tokenizers.audio_metrics import MultiScaleMel, mel_distance, si_snr
from native_mm.tokenizers.audio_train import AudioDataSpec, list_audio
from native_mm.tokenizers.base import MediaError, Waveform


def evaluate(
    tok: AudioTokenizer, groups: dict[str, sources.LabeledMedia], levels: int | None = None
) -> dict:
    """SI-SNR, multi-scale mel distance and, for judged groups, accuracy kept.

    Args:
        tok: the audio tokenizer (its first ``levels`` RVQ levels when given).
        groups: split name -> audio file paths; a group with labels and a judge also
            reports the judge's accuracy on the originals and on the reconstructions.
        levels: RVQ levels to use (None = the tokenizer's configured levels).
    """
    if levels:
        tok.config.levels = levels
    mel = MultiScaleMel(tok.sample_rate, [64, 128, 256, 512, 1024])
    result: dict[str, Any] = {
        "tokenizer_fingerprint": tok.fingerprint(),
        "levels": tok.n_levels,
        "frame_rate": tok.config.frame_rate,
        "splits": {},
    }
    for split, group in groups.items():
        snrs, dists, orig, recs, n_tokens = [], [], [], [], []
        for path in group.items:
            x = convert(read_audio(path), tok.sample_rate, tok.config.channels, str(path))
            codes = tok.encode(Waveform(x.numpy(), tok.sample_rate))
            n_tokens.append(codes.size)
            y = tok.decode(codes).samples[:, : x.shape[-1]]
            snrs.append(si_snr(x.numpy().mean(0), y.mean(0)))
            dists.append(mel_distance(mel, x[None], torch.from_numpy(y)[None]))
            orig.append(Waveform(x.numpy().mean(0, keepdims=True), tok.sample_rate))
            recs.append(Waveform(y.mean(0, keepdims=True), tok.sample_rate))
        r = {
            "clips": len(group.items),
            "si_snr_db": float(np.mean(snrs)),
            "mel_distance": float(np.mean(dists)),
            "tokens_per_clip": float(np.mean(n_tokens)),
        }
        if group.judge is not None and group.labels:
            a_o, a_r = group.judge(orig, group.labels), group.judge(recs, group.labels)
            r |= {
                "digit_acc_original": a_o,
                "digit_acc_reconstructed": a_r,
                "accuracy_kept": a_r / a_o if a_o else float("nan"),
            }
        result["splits"][split] = r
    return result


def eval_groups(data: str, splits: list[str] | None) -> dict[str, sources.LabeledMedia]:
    """``--data`` -> groups: a source's splits (default ``heldout``), or one ``all`` group."""
    if sources.is_ref(data):
        return {s: sources.load(data, s) for s in splits or ["heldout"]}
    return {"all": sources.LabeledMedia(list_audio(AudioDataSpec(source=str(data))))}


def eval_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``native-mm tokenizer eval audio --tokenizer DIR --data PATH --out metrics.json``."""
    from native_mm.io import write_json

    ap = cli_help.parser(prog, "Evaluate an audio tokenizer.")
    ap.add_argument("--tokenizer", required=True, help="saved tokenizer directory")
    ap.add_argument(
        "--data",
        required=True,
        help="a 'module:function' source (e.g. native_mm.apps.digits.sources:speech), "
        "a folder of audio, or a .jsonl",
    )
    ap.add_argument("--split", action="append", help="a source's split(s) (default: heldout)")
    ap.add_argument("--levels", type=int, default=0, help="RVQ levels to use (0 = config's)")
    ap.add_argument("--out", required=True, help="metrics JSON to write")
    args = ap.parse_args(argv)
    try:
        tok = AudioTokenizer.load(args.tokenizer)
    except MediaError as e:
        raise ValueError(str(e)) from None
    res = evaluate(tok, eval_groups(args.data, args.split), args.levels or None)
    write_json(args.out, res)
    print(json.dumps(res, indent=2))
    return 0
