"""Builder of the bad-input corpus: a dirty documents JSONL plus media, made at test time.

Every record is listed in :data:`EXPECTED` with how the pipeline must treat it: kept, or
skipped with a reason (the ``validate`` reason key for records the validator refuses, the
error class for media the tokenizers refuse at encode time). Nothing here is big on disk:
the 20000x20000 image is a valid PNG header claiming that size with one tiny IDAT chunk.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# record id -> (stage, outcome). stage "validate": refused by the document validator with
# that reason; stage "encode": refused by a tokenizer (skipped.json reason); "kept": kept.
EXPECTED: dict[str, tuple[str, str]] = {
    "good-text": ("kept", ""),
    "good-image": ("kept", ""),
    "good-audio": ("kept", ""),
    "png-truncated": ("encode", "MediaError"),
    "png-zero-byte": ("encode", "MediaError"),
    "png-corrupt": ("encode", "MediaError"),
    "jpeg-truncated": ("encode", "MediaError"),
    "jpeg-zero-byte": ("encode", "MediaError"),
    "jpeg-corrupt": ("encode", "MediaError"),
    "text-renamed-png": ("encode", "MediaError"),
    "image-1x1": ("kept", ""),
    "image-20000x20000": ("encode", "MediaError"),
    "image-16bit": ("kept", ""),
    "image-cmyk": ("kept", ""),
    "image-is-a-directory": ("validate", "missing_media"),
    "audio-unreadable": ("encode", "MediaError"),
    "audio-empty": ("encode", "MediaError"),
    "audio-nan": ("encode", "MediaError"),
    "audio-truncated-header": ("encode", "MediaError"),
    "audio-long": ("kept", ""),
    "audio-44k-stereo": ("kept", ""),
    "audio-6-channels": ("kept", ""),
    "audio-11025hz": ("kept", ""),
    "longer-than-context": ("kept", ""),
    "path-dotdot": ("validate", "path_escape"),
    "path-absolute": ("validate", "path_escape"),
    "path-symlink-out": ("validate", "path_escape"),
    "missing-file": ("validate", "missing_media"),
    "lone-surrogate-text": ("validate", "lone_surrogate"),
    "lone-surrogate-id\ud800": ("validate", "lone_surrogate"),
}
# Records with no usable id (or a repeated one): line-level failures, by reason.
LINE_FAILURES: dict[str, str] = {
    "invalid_utf8": "invalid UTF-8",
    "malformed_json": "malformed JSON",
    "duplicate_id": "duplicate id 'good-text'",
    "not_an_object": "expected a JSON object",
    "empty_document": "empty document",
}

AUDIO_SR = 8000  # the tiny test EnCodec's rate


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (8-bit gray) claiming ``width`` x ``height``, one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # one row of pixels, the rest missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


def _wav(path: Path, samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    import soundfile as sf

    sf.write(str(path), samples, sr, subtype=subtype)


def build(root: Path, long_audio_seconds: float = 20.0) -> Path:
    """Write the corpus under ``root`` (corpus/ + outside/); returns the JSONL path."""
    rng = np.random.default_rng(0)
    corpus, outside = root / "corpus", root / "outside"
    media = corpus / "media"
    media.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)

    def img(name: str, image: Image.Image, fmt: str) -> str:
        image.save(media / name, format=fmt)
        return f"media/{name}"

    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    good_png = img("good.png", rgb, "PNG")
    img("good.jpg", rgb, "JPEG")
    png_bytes, jpg_bytes = (media / "good.png").read_bytes(), (media / "good.jpg").read_bytes()
    (media / "truncated.png").write_bytes(png_bytes[: len(png_bytes) // 2])
    (media / "zero.png").write_bytes(b"")
    (media / "corrupt.png").write_bytes(png_bytes[:16] + rng.bytes(len(png_bytes) - 16))
    (media / "truncated.jpg").write_bytes(jpg_bytes[: len(jpg_bytes) // 3])
    (media / "zero.jpg").write_bytes(b"")
    (media / "corrupt.jpg").write_bytes(jpg_bytes[:4] + rng.bytes(len(jpg_bytes) - 4))
    (media / "notes.png").write_text("this is a text file, not an image\n")
    img("one.png", Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    (media / "bomb.png").write_bytes(png_claiming(20000, 20000))
    deep = rng.integers(0, 65535, (20, 20), dtype=np.uint16)
    img("deep16.png", Image.fromarray(deep), "PNG")
    assert Image.open(media / "deep16.png").mode.startswith("I")
    img("cmyk.jpg", Image.new("CMYK", (20, 16), (10, 200, 30, 5)), "JPEG")
    (media / "a_dir.png").mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(png_bytes)
    link = media / "link.png"
    if not link.exists():
        os.symlink(outside / "secret.png", link)

    t = np.arange(int(0.25 * AUDIO_SR)) / AUDIO_SR
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    _wav(media / "good.wav", tone, AUDIO_SR)
    (media / "unreadable.wav").write_bytes(rng.bytes(3000))
    _wav(media / "empty.wav", np.zeros(0, np.float32), AUDIO_SR)
    nan = tone.copy()
    nan[100] = np.nan
    _wav(media / "nan.wav", nan, AUDIO_SR, subtype="FLOAT")
    wav_bytes = (media / "good.wav").read_bytes()
    (media / "truncated.wav").write_bytes(wav_bytes[:30])
    n_long = int(long_audio_seconds * AUDIO_SR)
    _wav(media / "long.wav", 0.1 * rng.standard_normal(n_long).astype(np.float32), AUDIO_SR)
    t44 = np.arange(int(0.2 * 44100)) / 44100
    _wav(media / "stereo44k.wav", np.stack([np.sin(2e3 * t44), np.cos(2e3 * t44)], 1) * 0.2, 44100)
    _wav(media / "six.wav", 0.1 * rng.standard_normal((1600, 6)), AUDIO_SR)
    _wav(media / "low.wav", 0.1 * rng.standard_normal(2205), 11025)

    def rec(doc_id: str, *segments: dict) -> str:
        return json.dumps({"id": doc_id, "segments": list(segments)})

    lines: list[bytes] = [
        rec("good-text", {"text": "a clean text document"}).encode(),
        rec("good-image", {"text": "an image"}, {"image": good_png}).encode(),
        rec("good-audio", {"text": "a tone"}, {"audio": "media/good.wav"}).encode(),
    ]
    media_cases = {
        "png-truncated": ("image", "truncated.png"),
        "png-zero-byte": ("image", "zero.png"),
        "png-corrupt": ("image", "corrupt.png"),
        "jpeg-truncated": ("image", "truncated.jpg"),
        "jpeg-zero-byte": ("image", "zero.jpg"),
        "jpeg-corrupt": ("image", "corrupt.jpg"),
        "text-renamed-png": ("image", "notes.png"),
        "image-1x1": ("image", "one.png"),
        "image-20000x20000": ("image", "bomb.png"),
        "image-16bit": ("image", "deep16.png"),
        "image-cmyk": ("image", "cmyk.jpg"),
        "image-is-a-directory": ("image", "a_dir.png"),
        "audio-unreadable": ("audio", "unreadable.wav"),
        "audio-empty": ("audio", "empty.wav"),
        "audio-nan": ("audio", "nan.wav"),
        "audio-truncated-header": ("audio", "truncated.wav"),
        "audio-long": ("audio", "long.wav"),
        "audio-44k-stereo": ("audio", "stereo44k.wav"),
        "audio-6-channels": ("audio", "six.wav"),
        "audio-11025hz": ("audio", "low.wav"),
        "path-symlink-out": ("image", "link.png"),
        "missing-file": ("image", "nope.png"),
    }
    for doc_id, (kind, name) in media_cases.items():
        lines.append(rec(doc_id, {"text": doc_id}, {kind: f"media/{name}"}).encode())
    lines += [
        rec("longer-than-context", {"text": "lorem ipsum dolor " * 400}).encode(),
        rec("path-dotdot", {"image": "../../etc/passwd"}).encode(),
        rec("path-absolute", {"image": "/etc/passwd"}).encode(),
        # JSON escapes of a lone surrogate: valid JSON, not valid Unicode text.
        b'{"id": "lone-surrogate-text", "segments": [{"text": "bad \\ud800 here"}]}',
        b'{"id": "lone-surrogate-id\\ud800", "segments": [{"text": "x"}]}',
        b'{"id": "bad-utf8", "segments": [{"text": "caf\xe9 \xff\xfe"}]}',
        b'{"id": "broken json", "segments": [',
        rec("good-text", {"text": "the same id again"}).encode(),
        b"[1, 2, 3]",
        rec("empty", {"text": ""}).encode(),
    ]
    path = corpus / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path
