"""Text BPE tokenizer: exact round trip, save/load/fingerprint, training, CLI verb."""

from __future__ import annotations

import hashlib
import io
import json
import pickle

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import example, given, settings
from hypothesis import strategies as st

from native_mm.apps.digits.sources import digit_sentences
from native_mm.cli import main as cli_main
from native_mm.tokenizers.base import TokenizerSet
from native_mm.tokenizers.text import (
    META,
    TextSpec,
    TextTokenizer,
    TextTokenizerError,
    iter_spec_texts,
    train_text_tokenizer,
)
from native_mm.tokenizers.trainer import load_spec
from native_mm.vocab import VocabError

from .conftest import ROOT, TEXT_SAMPLE

# Every valid str: all code points except the surrogates (category Cs).
ANY_CHAR = st.characters(blacklist_categories=("Cs",))
# Characters that break naive tokenizers, mixed in so hypothesis hits them often.
TRICKY = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r\n", "\r", "\x00", "\x7f", "\u00a0", "\u200b", "\ufeff",
     META, f" {META} ", "\u3000", "\uff21", "\ufb01", "e\u0301", "é", "😀", "👍🏽", "数字",
     "<unk>", "<0x41>", "<s>", "\U0010ffff", "\uffff", "\u2028"]
)  # fmt: skip
TEXTS = st.one_of(
    st.text(ANY_CHAR),
    st.lists(st.one_of(TRICKY, st.text(ANY_CHAR, max_size=4)), max_size=12).map("".join),
)

EXPLICIT = [
    "",
    " ",
    "   leading and trailing   ",
    "multiple    spaces\t\ttabs",
    "\x00",
    "a\x00b\x01\x1f\x7f",
    "\r\n",
    "line1\r\nline2\n\nline3\r",
    "数字七写作七。",
    "emoji 😀👍🏽🎉 and ZWJ 👨‍👩‍👧",
    META,
    f"{META}{META}x{META} ",
    f" {META} ",
    "<unk> <s> </s> <pad> <0x00>",
    "\ufeffBOM and \u200bzero width",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ Ⅻ é e\u0301",
    "\U0010ffff\uffff\ue000",
    "The digit 7 is written seven.",
]


@settings(max_examples=1000, deadline=None)
@given(TEXTS)
@example("")
@example(META)
@example("\x00\r\n  ")
def test_round_trip_any_unicode(text_tokenizer, text):
    ids = text_tokenizer.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ((ids >= 0) & (ids < text_tokenizer.codebook_size)).all()
    assert text_tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXTS, max_size=4))
def test_decode_is_concatenative(text_tokenizer, parts):
    # The sequence codec merges adjacent text segments into one run of ids: decoding the
    # concatenated ids must give the concatenated text.
    ids = np.concatenate([text_tokenizer.encode(p) for p in parts] + [np.zeros(0, np.int64)])
    assert text_tokenizer.decode(ids) == "".join(parts)


@pytest.mark.parametrize("text", EXPLICIT)
def test_round_trip_explicit(text_tokenizer, text):
    assert text_tokenizer.decode(text_tokenizer.encode(text)) == text


def test_meta_symbol_is_not_a_space(text_tokenizer):
    # sentencepiece itself would decode a literal "▁" as a space.
    assert text_tokenizer.decode(text_tokenizer.encode(META)) == META
    assert text_tokenizer.decode(text_tokenizer.encode(" ")) == " "
    assert text_tokenizer.pieces(META) == ["<0xE2>", "<0x96>", "<0x81>"]


def test_never_emits_unk(text_tokenizer):
    ids = text_tokenizer.encode("数字七写作七 \x00 😀 ᚠᛇᚻ")
    assert 0 not in ids.tolist()  # piece 0 is <unk>; byte fallback covers everything


def test_merges_compress_seen_text(text_tokenizer):
    # BPE pieces are used (not only bytes): the corpus text needs far fewer ids than bytes.
    text = TEXT_SAMPLE.read_text(encoding="utf-8")
    assert len(text_tokenizer.encode(text)) < 0.6 * len(text.encode("utf-8"))


def test_lone_surrogate_is_a_clear_error(text_tokenizer):
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at index 2"):
        text_tokenizer.encode("ab\ud800c")
    with pytest.raises(ValueError, match="expected str"):
        text_tokenizer.encode(b"bytes")


def test_decode_errors_and_invalid_bytes(text_tokenizer):
    with pytest.raises(ValueError, match="outside"):
        text_tokenizer.decode(np.array([text_tokenizer.codebook_size]))
    with pytest.raises(ValueError, match="shape"):
        text_tokenizer.decode(np.zeros((2, 2), dtype=np.int64))
    # A truncated UTF-8 sequence (possible in generated ids) becomes U+FFFD, not an error.
    ids = text_tokenizer.encode("ᚠ")  # not in the corpus: three byte pieces
    assert text_tokenizer.pieces("ᚠ") == ["<0xE1>", "<0x9A>", "<0xA0>"]
    assert text_tokenizer.decode(ids[:2]) == "\ufffd"
    assert text_tokenizer.decode(np.array([], dtype=np.int64)) == ""


def test_save_load_keeps_fingerprint(tmp_path, text_tokenizer):
    text_tokenizer.save(tmp_path)
    model = (tmp_path / "text.model").read_bytes()
    assert text_tokenizer.fingerprint() == hashlib.sha256(model).hexdigest()
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.fingerprint() == text_tokenizer.fingerprint()
    assert loaded.codebook_size == text_tokenizer.codebook_size
    for text in EXPLICIT:
        assert np.array_equal(loaded.encode(text), text_tokenizer.encode(text))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    # DataLoader workers receive tokenizers by pickling.
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.fingerprint() == loaded.fingerprint() and clone.decode(clone.encode(META)) == META


def test_different_model_different_fingerprint(text_corpus, text_tokenizer):
    other = train_text_tokenizer(TextSpec(vocab_size=480, character_coverage=1.0), text_corpus)
    assert other.codebook_size == 480
    assert other.fingerprint() != text_tokenizer.fingerprint()


def test_corrupt_model_file_refused(tmp_path, text_tokenizer):
    text_tokenizer.save(tmp_path)
    path = tmp_path / "text.model"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum mismatch"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="text.model"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="missing text tokenizer model"):
        TextTokenizer.load(tmp_path / "nowhere")


def test_normalizing_model_refused(text_corpus):
    # A model trained with sentencepiece's defaults (NFKC, dummy prefix) cannot round-trip.
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text_corpus), model_writer=buf, model_type="bpe",
        vocab_size=400, byte_fallback=True, bos_id=-1, eos_id=-1, minloglevel=2,
    )  # fmt: skip
    with pytest.raises(TextTokenizerError, match="round-trip"):
        TextTokenizer(buf.getvalue())


def test_train_from_files_equals_iterator(tmp_path, text_corpus):
    spec = TextSpec(vocab_size=450, character_coverage=0.99)
    (tmp_path / "a.txt").write_text("\n".join(text_corpus[:40]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\r\n".join(text_corpus[40:]), encoding="utf-8")
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    from_files = train_text_tokenizer(spec, iter_spec_texts(spec, files))
    from_iter = train_text_tokenizer(spec, iter(text_corpus))
    assert from_files.fingerprint() == from_iter.fingerprint()  # training is deterministic
    assert from_files.train_stats["lines"] == len([t for t in text_corpus if t.strip()])


def test_train_errors(text_corpus):
    with pytest.raises(ValueError, match="no training text"):
        train_text_tokenizer(TextSpec(vocab_size=300), ["", "  \n"])
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        train_text_tokenizer(TextSpec(vocab_size=100_000), text_corpus)
    with pytest.raises(ValueError, match="vocab_size"):
        TextSpec(vocab_size=100)
    with pytest.raises(ValueError, match="not 'package.module:function'"):
        TextSpec(generators=["nope"])


def test_max_lines_and_long_lines(text_corpus):
    spec = TextSpec(vocab_size=300, max_lines=10, hard_vocab_limit=False)
    tok = train_text_tokenizer(spec, ["x" * 20_000, *text_corpus])
    assert tok.train_stats["lines"] == 10  # the 20,000-char line was cut into 20 chunks
    assert tok.decode(tok.encode("x" * 50)) == "x" * 50
    assert len(tok.encode("x" * 64)) <= 4  # long pieces of x were learned


def test_space_piece_forced(text_corpus):
    # A corpus with no (or rare) spaces: sentencepiece would drop the "▁" piece and
    # byte-encode spaces as the bytes of "▁", making " " and "▁" indistinguishable.
    spec = TextSpec(vocab_size=270, character_coverage=0.98, hard_vocab_limit=False)
    tok = train_text_tokenizer(spec, ["数字七写作七"] * 1000 + ["a b"])
    for text in (" ", META, f" {META} a b"):
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("spec_file", sorted((ROOT / "tokenizers" / "text").glob("*.yaml")))
def test_shipped_specs_load(spec_file):
    spec = load_spec(TextSpec, spec_file)
    assert spec.vocab_size > 257


def test_cli_train_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT_SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    docs = tmp_path / "docs.jsonl"
    records = [
        {"id": f"d{i}", "segments": [{"text": "quokka quokka zebu"}, {"image": "missing.png"}]}
        for i in range(30)
    ]
    docs.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "text", "--config", str(ROOT / "tokenizers/text/default.yaml")]
    argv += ["--out", str(out), "--input", str(corpus), "--input", str(docs), "vocab_size=420"]
    assert cli_main(argv) == 0
    tok = TextTokenizer.load(out)
    assert tok.codebook_size == 420
    assert tok.decode(tok.encode("quokka 😀")) == "quokka 😀"
    assert len(tok.pieces("quokka")) <= 2  # the JSONL's text segments were trained on
    log = json.loads((out / "train_log.json").read_text())
    assert log["skipped_documents"] == 1 and log["fingerprint"] == tok.fingerprint()
    assert "420 pieces" in capsys.readouterr().err


def test_cli_train_errors(tmp_path, capsys):
    config = str(ROOT / "tokenizers/text/default.yaml")
    assert cli_main(["tokenizer", "train", "text", "--config", config, "--out",
                     str(tmp_path), "vocab_sise=400"]) == 1  # fmt: skip
    assert "unknown key(s) ['vocab_sise']" in capsys.readouterr().err
    assert cli_main(["tokenizer", "train", "text", "--config", config, "--out",
                     str(tmp_path), "--input", str(tmp_path / "none.txt")]) == 1  # fmt: skip
    assert "none.txt" in capsys.readouterr().err


def test_tokenizer_set_text_only(tmp_path, text_tokenizer):
    tset = TokenizerSet(text_tokenizer)
    tset.save(tmp_path)
    loaded = TokenizerSet.load(tmp_path)
    assert loaded.image is None and loaded.audio is None
    assert loaded.vocab == tset.vocab and loaded.vocab.text_size == text_tokenizer.codebook_size
    assert loaded.fingerprints() == {"text": text_tokenizer.fingerprint()}
    assert loaded["text"].decode(loaded["text"].encode("héllo ▁ 世界")) == "héllo ▁ 世界"
    # Swap in another text model with the same size: the manifest refuses it.
    other = train_text_tokenizer(
        TextSpec(vocab_size=text_tokenizer.codebook_size, character_coverage=1.0, seed=1),
        list(digit_sentences()) + ["quokka"] * 50,
    )
    other.save(tmp_path / "text")
    with pytest.raises(VocabError, match="fingerprint mismatch"):
        TokenizerSet.load(tmp_path)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(TEXTS)
def test_round_trip_any_unicode_10k(text_tokenizer, text):
    assert text_tokenizer.decode(text_tokenizer.encode(text)) == text
