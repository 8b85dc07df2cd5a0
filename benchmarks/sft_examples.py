"""Real two-turn conversations with the digits SFT model, as a figure and a transcript.

    python benchmarks/sft_examples.py --sft runs/digits_sft/replay/lm/checkpoints/last.ckpt \
        --tokenizers runs/digits_sft/tokenizers --out benchmarks/sft

Held-out writers' images and held-out voices' clips, one per digit: the user shows the
image (or plays the clip) and asks what it is; then asks to say it (or draw it). The
figure shows the prompt, the model's first answer and its second turn (a spectrogram with
the judge's reading, or the drawn image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from native_mm.apps.digits.evaluation import Judges  # noqa: E402
from native_mm.apps.digits.prompts import heldout_clips, heldout_images  # noqa: E402
from native_mm.apps.digits.sft import ASK_AUDIO, ASK_IMAGE, DRAW, SAY  # noqa: E402
from native_mm.io import save_figure  # noqa: E402
from native_mm.pretrained import from_pretrained  # noqa: E402


def _spectrogram(ax, wave) -> None:
    x = wave.samples.mean(axis=0)
    ax.specgram(x, NFFT=256, Fs=wave.sample_rate, noverlap=192, cmap="magma")
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True)
    ap.add_argument("--tokenizers", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-kind", type=int, default=5)
    args = ap.parse_args()
    model = from_pretrained(args.sft, args.tokenizers)
    judges = Judges()
    images, img_y = heldout_images(16)
    clips, clip_y = heldout_clips(None)
    first = {d: int(np.flatnonzero(img_y == d)[0]) for d in range(10)}
    first_clip = {d: int(np.flatnonzero(clip_y == d)[0]) for d in range(10)}
    rows, lines = [], []
    for d in range(args.per_kind):  # image -> text -> audio
        turns = [("user", [images[first[d]], ASK_IMAGE[0]])]
        [a1] = model.chat(turns, "text", max_new_tokens=16)
        turns += [("assistant", a1.outputs[-1]), ("user", SAY[0])]
        [a2] = model.chat(turns, "audio", max_new_tokens=80)  # the model ends the clip
        heard = int(judges.audio_labels([a2.outputs[-1]])[0])
        rows.append(("image", images[first[d]], a1.outputs[-1], "audio", a2.outputs[-1], heard))
        lines.append(f"- user: [held-out image of a {d}] {ASK_IMAGE[0]} / assistant: "
                     f"{a1.outputs[-1]!r} / user: {SAY[0]} / assistant: [audio; the judge "
                     f"hears {heard}]")  # fmt: skip
    for d in range(5, 5 + args.per_kind):  # audio -> text -> image
        turns = [("user", [clips[first_clip[d]], ASK_AUDIO[0]])]
        [a1] = model.chat(turns, "text", max_new_tokens=16)
        turns += [("assistant", a1.outputs[-1]), ("user", DRAW[0])]
        [a2] = model.chat(turns, "image", image_size=(4, 4))
        seen = int(judges.image_labels([a2.outputs[-1]])[0])
        rows.append(("audio", clips[first_clip[d]], a1.outputs[-1], "image", a2.outputs[-1], seen))
        lines.append(f"- user: [held-out voice saying {d}] {ASK_AUDIO[0]} / assistant: "
                     f"{a1.outputs[-1]!r} / user: {DRAW[0]} / assistant: [image; the judge "
                     f"reads {seen}]")  # fmt: skip
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 1.35 * len(rows)))
    for r, (kind, prompt, answer, kind2, second, judged) in enumerate(rows):
        ax0, ax1, ax2 = axes[r]
        if kind == "image":
            ax0.imshow(prompt, cmap="gray")
            ax0.set_axis_off()
        else:
            _spectrogram(ax0, prompt)
        ax0.set_title("user: " + (ASK_IMAGE[0] if kind == "image" else ASK_AUDIO[0]), fontsize=7)
        ax1.text(0.5, 0.5, f"assistant:\n{answer}", ha="center", va="center", fontsize=9)
        ax1.set_axis_off()
        ax1.set_title("user: " + (SAY[0] if kind2 == "audio" else DRAW[0]), fontsize=7)
        if kind2 == "audio":
            _spectrogram(ax2, second)
        else:
            ax2.imshow(second, cmap="gray")
            ax2.set_axis_off()
        ax2.set_title(f"assistant's turn 2 (judge: {judged})", fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(out / "conversations.png", fig, dpi=110)
    (out / "conversations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
