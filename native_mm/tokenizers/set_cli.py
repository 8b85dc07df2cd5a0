"""``native-mm tokenizer set``: the shared vocabulary from the tokenizers a user names.

Any subset of modalities around a text tokenizer (text only; text + image; text + audio;
all three). Each tokenizer is a trained tokenizer directory (``tokenizer train`` writes
them), or a published pretrained model read from a local weights file: for audio Meta's
EnCodec (``--audio encodec_24khz:PATH`` or ``encodec_48khz:PATH``; the file keeps its
published name ``NAME-CHECKSUM.th``, whose checksum is verified), for images LlamaGen's VQ
(``--image llamagen:PATH``, e.g. its ``vq_ds16_c2i.pt``). The set is written as the
``tokenize`` / ``fit`` / ``generate`` verbs read it: ``OUT/{text,image,audio}/``, the
codebooks' vectors and ``OUT/manifest.json`` (the vocabulary and each tokenizer's
fingerprint, so a mismatched tokenizer is refused downstream).

    native-mm tokenizer set --text tok/text --image tok/image --audio encodec_24khz:w/ --out set
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from native_mm import cli_help
from native_mm.tokenizers.base import MediaError, TokenizerSet, tokenizer_class
from native_mm.vocab import VocabError

PRETRAINED_PREFIXES = ("encodec_24khz", "encodec_48khz")
IMAGE_PRETRAINED = ("llamagen",)


def load_tokenizer(modality: str, source: str, audio_levels: int | None = None) -> Any:
    """A tokenizer of ``modality`` from a directory, or (audio) ``NAME:PATH`` of a
    pretrained EnCodec. Raises :class:`MediaError` naming the source when it is missing
    or holds another modality's tokenizer."""
    name, _, path = source.partition(":")
    if modality == "audio" and name in PRETRAINED_PREFIXES and path:
        from native_mm.tokenizers.audio import AudioTokenizer

        return AudioTokenizer.from_pretrained(name, path, levels=audio_levels or 8)
    if modality == "image" and name in IMAGE_PRETRAINED and path:
        from native_mm.tokenizers.image import ImageTokenizer

        return ImageTokenizer.from_pretrained(name, path)
    directory = Path(source)
    if not directory.is_dir():
        known = {"audio": PRETRAINED_PREFIXES, "image": IMAGE_PRETRAINED}.get(modality)
        hint = f" (or {'/'.join(known)}:PATH)" if known else ""
        raise MediaError(f"{directory}: no {modality} tokenizer directory there{hint}")
    tok = tokenizer_class(modality).load(directory)
    if audio_levels is not None and modality == "audio" and audio_levels != tok.n_levels:
        raise MediaError(
            f"{directory}: --audio-levels {audio_levels} applies to a pretrained EnCodec; "
            f"this tokenizer codes {tok.n_levels} levels (set model.levels when training it)"
        )
    return tok


def build(
    out: str | Path,
    text: str,
    image: str | None = None,
    audio: str | None = None,
    image_max_grid: int = 64,
    audio_levels: int | None = None,
    added: tuple[str, ...] = (),
) -> TokenizerSet:
    """Load the named tokenizers, check them, and save the set into ``out``."""
    toks = {"text": load_tokenizer("text", text)}
    if image:
        toks["image"] = load_tokenizer("image", image)
    if audio:
        toks["audio"] = load_tokenizer("audio", audio, audio_levels)
    tset = TokenizerSet(**toks, image_max_grid=image_max_grid, added=added)
    out = Path(out)
    if (out / "manifest.json").exists():
        raise VocabError(f"{out}: holds a tokenizer set already; choose another --out")
    tset.save(out)
    return tset


def main(argv: list[str] | None = None, prog: str = "native-mm tokenizer set") -> int:
    ap = cli_help.parser(prog, __doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument(
        "--from",
        dest="base",
        metavar="SET",
        help="an existing tokenizer set: its tokenizers, grid and added specials, "
        "to add specials to (--add-specials)",
    )
    ap.add_argument("--text", help="the text tokenizer's directory (required without --from)")
    ap.add_argument(
        "--image",
        help="an image tokenizer's directory, or llamagen:PATH for LlamaGen's pretrained VQ "
        "from a local weights file (none: no images)",
    )
    ap.add_argument(
        "--audio",
        help="an audio tokenizer's directory, or encodec_24khz:PATH / encodec_48khz:PATH "
        "for Meta's pretrained EnCodec from a local weights file (none: no audio)",
    )
    ap.add_argument(
        "--audio-levels",
        type=int,
        help="RVQ levels of a pretrained EnCodec (24 kHz: 2/4/8/16/32 = 1.5-24 kbps) [8]",
    )
    ap.add_argument(
        "--image-max-grid", type=int, default=64, help="largest image grid side, in codes"
    )
    ap.add_argument(
        "--add-specials",
        default="",
        metavar="'<user>,<assistant>'",
        help="special tokens to add after every other id (e.g. chat role markers "
        "for a second stage; a model trained without them grows into them)",
    )
    ap.add_argument("--out", required=True, help="the directory to write the set into")
    a = ap.parse_args(argv)
    added = tuple(t.strip() for t in a.add_specials.split(",") if t.strip())
    if a.base:
        base = TokenizerSet.load(a.base)
        for kind in ("text", "image", "audio"):
            if getattr(a, kind) is None and getattr(base, kind) is not None:
                setattr(a, kind, str(Path(a.base) / kind))
        a.image_max_grid, added = base.vocab.image_max_grid, base.vocab.added + added
    if a.text is None:
        ap.error("--text (or --from SET) is required")
    if a.image_max_grid < 1 or (a.audio_levels is not None and a.audio_levels < 1):
        ap.error("--image-max-grid and --audio-levels must be >= 1")
    tset = build(a.out, a.text, a.image, a.audio, a.image_max_grid, a.audio_levels, added)
    print(f"tokenizer set -> {a.out}: {tset.vocab.summary()}")
    return 0
