"""Packed token shards: content, manifest, skipped records, resumable builds, corruption."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

import native_mm.training.shards as shards_mod
from native_mm.cli import main as cli_main
from native_mm.documents import read_documents
from native_mm.sequence import SequenceCodec, encode_document
from native_mm.training.media_cache import MediaCache
from native_mm.training.shard_reader import ShardSet
from native_mm.training.shards import ShardError, read_manifest, tokenize
from tests.doubles import tokenizer_set, write_corpus


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    corpus = write_corpus(root / "corpus", 30)
    manifest = tokenize([corpus], root / "out", tokenizer_set(), docs_per_shard=7, workers=2,
                        log=_quiet)  # fmt: skip
    return corpus, root / "out", manifest


def _expected(corpus):
    tset = tokenizer_set()
    codec = SequenceCodec(tset.vocab)
    out = []
    for doc in read_documents(corpus, on_error="skip"):
        with contextlib.suppress(ValueError):  # the bad image: skipped by tokenize too
            out.append((doc.id, encode_document(doc, tset, codec)))
    return out


def test_shards_hold_every_document_once_in_order(built):
    corpus, out, manifest = built
    expected = _expected(corpus)
    ss = ShardSet(out)
    assert len(ss) == len(expected) == manifest["documents"] == 30
    for k, (_, enc) in enumerate(expected):
        ids, loss = ss.document(k)
        np.testing.assert_array_equal(ids, enc.ids)
        np.testing.assert_array_equal(loss, enc.loss_mask)
    assert ss.dtype == np.uint16 == tokenizer_set().vocab.dtype
    assert (out / "shards/00000.ids.bin").stat().st_size == 2 * manifest["shards"][0]["tokens"]
    # manifest: vocabulary, per-modality counts, source mixture, checksums
    assert manifest["vocab"] == tokenizer_set().manifest()
    total = sum(len(e.ids) for _, e in expected)
    assert manifest["tokens"] == total == sum(manifest["modality_tokens"].values())
    assert manifest["modality_tokens"]["image"] > 0 and manifest["modality_tokens"]["audio"] > 0
    assert manifest["sources"] == {"docs": {"documents": 30, "tokens": total}}
    assert len(manifest["shards"]) == 5
    assert all(len(s["files"]["ids.bin"]["sha256"]) == 64 for s in manifest["shards"])


def test_skipped_records_are_reported_with_reasons(built):
    _, out, _ = built
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["count"] == 2
    by_reason = {r["reason"]: r for r in skipped["records"]}
    assert by_reason["invalid_record"]["source"].endswith("docs.jsonl:4")
    assert "bad.npy" in by_reason["MediaError"]["message"]
    assert by_reason["MediaError"]["source"].endswith("docs.jsonl:6")


def test_interrupted_build_resumes_without_loss_or_duplicates(built, tmp_path, monkeypatch):
    corpus, clean_out, clean = built
    out = tmp_path / "out"
    real, calls = shards_mod._run_job, []

    def dying(job):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(job.index)
        return real(job)

    monkeypatch.setattr(shards_mod, "_run_job", dying)
    with pytest.raises(KeyboardInterrupt):
        tokenize([corpus], out, tokenizer_set(), docs_per_shard=7, workers=0, log=_quiet)
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in (out / "shards").glob("*.done.json"))
    assert done == ["00000.done.json", "00001.done.json"]
    mtime = (out / "shards/00000.ids.bin").stat().st_mtime_ns
    # a half-written shard whose marker is stale must be redone, not trusted
    (out / "shards/00002.ids.bin").write_bytes(b"partial")
    monkeypatch.setattr(shards_mod, "_run_job", real)
    calls.clear()
    manifest = tokenize([corpus], out, tokenizer_set(), docs_per_shard=7, workers=0, log=_quiet)
    assert (out / "shards/00000.ids.bin").stat().st_mtime_ns == mtime  # not redone
    keys = ("documents", "tokens", "modality_tokens", "sources")
    assert {k: manifest[k] for k in keys} == {k: clean[k] for k in keys}
    assert [s["files"] for s in manifest["shards"]] == [s["files"] for s in clean["shards"]]
    ids = [
        i for k in range(5) for i in json.loads((out / f"shards/{k:05d}.done.json").read_text())[
            "doc_ids"]
    ]  # fmt: skip
    assert len(ids) == len(set(ids)) == 30


def test_corrupted_shard_is_detected_naming_the_file(built, tmp_path):
    _, src, _ = built
    out = tmp_path / "copy"
    os.system(f"cp -r {src} {out}")
    victim = out / "shards/00003.ids.bin"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="00003.ids.bin.*corrupted"):
        ShardSet(out)
    ShardSet(out, verify="size")  # same size: only the checksum can tell
    victim.write_bytes(bytes(data[:-2]))
    with pytest.raises(ShardError, match="00003.ids.bin"):
        ShardSet(out, verify="size")


def test_corrupted_manifest_is_detected_naming_the_file(built, tmp_path):
    _, src, _ = built
    out = tmp_path / "copy"
    os.system(f"cp -r {src} {out}")
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    m["tokens"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"manifest\.json.*checksum"):
        read_manifest(out)
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ShardError, match=r"manifest\.json.*not valid JSON"):
        ShardSet(out)


def test_tokenize_verb_with_a_saved_tokenizer_set(tmp_path, capsys):
    """The CLI path: a text-only corpus and a real (tiny) sentencepiece tokenizer set."""
    text_mod = pytest.importorskip("native_mm.tokenizers.text")
    lines = [json.dumps({"id": f"d{i}", "segments": [{"text": f"doc {i} says hi"}]})
             for i in range(12)]  # fmt: skip
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    spec = text_mod.TextSpec(vocab_size=300, hard_vocab_limit=False)
    tok = text_mod.train_text_tokenizer(spec, [json.loads(x)["segments"][0]["text"] for x in lines])
    from native_mm.tokenizers.base import TokenizerSet

    TokenizerSet(tok).save(tmp_path / "tset")
    rc = cli_main(["tokenize", str(corpus), "--tokenizers", str(tmp_path / "tset"),
                   "--out", str(tmp_path / "out"), "--workers", "0"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents"] == 12
    assert len(ShardSet(tmp_path / "out")) == 12


def _media_corpus(root):
    """Six images and two clips reused across 24 documents, plus one corrupt PNG."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"i{i}.png")
    for i in range(2):
        sf.write(root / f"a{i}.wav", rng.uniform(-0.5, 0.5, 800 + 400 * i), 8000)
    (root / "bad.png").write_bytes(b"not a png")
    lines = []
    for k in range(24):
        image = "bad.png" if k == 5 else f"i{k % 6}.png"
        segs = [{"text": f"doc {k}"}, {"image": image}, {"audio": f"a{k % 2}.wav"}]
        lines.append(json.dumps({"id": f"d{k}", "segments": segs}))
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "docs.jsonl"


def test_media_cache_encodes_each_file_once_with_the_same_codes(tiny_tokenizers, tmp_path):
    corpus = _media_corpus(tmp_path / "c")
    manifest = tokenize([corpus], tmp_path / "out", tiny_tokenizers, docs_per_shard=10,
                        workers=0, log=_quiet)  # fmt: skip
    # same ids as encoding every document on its own, the corrupt image's document skipped
    codec = SequenceCodec(tiny_tokenizers.vocab)
    expected = []
    for doc in read_documents(corpus, on_error="skip"):
        with contextlib.suppress(ValueError):
            expected.append(encode_document(doc, tiny_tokenizers, codec).ids)
    ss = ShardSet(tmp_path / "out")
    assert manifest["documents"] == len(ss) == len(expected) == 23
    for k, ids in enumerate(expected):
        np.testing.assert_array_equal(ss.document(k)[0], ids)
    (skip,) = json.loads((tmp_path / "out/skipped.json").read_text())["records"]
    assert skip["id"] == "d5" and "bad.png" in skip["message"]
    # a file is encoded once; rewriting it (new size/mtime) encodes it again
    cache = MediaCache(tiny_tokenizers)
    docs = list(read_documents(corpus, on_error="skip"))
    cache.prefill(docs)  # a batch holding bad.png fails whole: left to per-document encoding
    assert len(cache.codes) == 0
    cache.prefill([d for d in docs if d.id != "d5"])  # the six images in one batch
    assert len(cache.codes) == 6 and (cache.misses, cache.hits) == (0, 0)
    for doc in docs:
        for seg in doc.segments:
            if seg.kind != "text" and seg.value.endswith(".wav"):
                cache(seg.kind, seg.value)
    assert (cache.misses, cache.hits) == (2, 22)
    wav = str(tmp_path / "c/a0.wav")
    first = cache("audio", wav)
    import soundfile as sf

    sf.write(wav, np.zeros(4000), 8000)
    second = cache("audio", wav)
    assert cache.misses == 3 and second.shape != first.shape
    assert cache("text", "doc 0") is None


def test_a_second_tokenize_into_the_same_directory_is_refused_naming_the_first(tmp_path):
    """Two runs into one directory both did all the work; now the second stops at once,
    and a killed holder never blocks the next run (the kernel drops its lock)."""
    import signal
    import subprocess
    import sys

    from native_mm.io import LockedError, directory_lock
    from tests.doubles import tokenizer_set, write_corpus

    corpus, out = write_corpus(tmp_path / "corpus", 6), tmp_path / "shards"
    first = rf"{out}: native-mm tokenize \(pid \d+\) is"
    with directory_lock(out, "native-mm tokenize"), pytest.raises(LockedError, match=first):
        tokenize([corpus], out, tokenizer_set(), workers=0, log=lambda s: None)
    code = ("import sys, time; from native_mm.io import directory_lock\n"
            "with directory_lock(sys.argv[1], 'holder'):\n"
            " print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError, match=r"holder \(pid"):
        tokenize([corpus], out, tokenizer_set(), workers=0, log=lambda s: None)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    manifest = tokenize([corpus], out, tokenizer_set(), workers=0, log=lambda s: None)
    assert manifest["documents"] > 0 and not (out / ".lock").exists()


def test_tokenize_shows_documents_per_second_on_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    corpus = write_corpus(tmp_path / "c", 8)
    tokenize([corpus], tmp_path / "s", tokenizer_set(), workers=0, log=lambda s: None)
    shown = term.getvalue()
    assert "tokenize" in shown and "doc/s" in shown and "/" in shown, shown[-300:]
