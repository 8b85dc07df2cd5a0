"""Free wording: the corpus asks in many ways, and the evaluation's unseen wordings stay
unseen (no training prompt, caption or BPE sentence uses their reserved words)."""

from __future__ import annotations

import random
import re

from native_mm.apps.digits import corpus, sources, wording
from native_mm.apps.digits.evaluation import parse_digit

_TOKEN = re.compile(r"[a-z']+")


def _words(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def test_free_prompts_vary_and_name_their_digit():
    r = random.Random(0)
    for kind in ("image", "audio"):
        prompts = [wording.free_prompt(kind, k % 10, r) for k in range(3000)]
        assert len(set(prompts)) > 1500  # wording, order, case and typos vary
        assert any(p.isupper() for p in prompts) and any(p[:1].isupper() for p in prompts)
        assert any(p.endswith("?") for p in prompts)
        assert all(parse_digit(p) == k % 10 for k, p in enumerate(prompts))


def test_no_training_text_uses_a_reserved_word():
    r = random.Random(1)
    training = [wording.free_prompt(k, d, r) for k in ("image", "audio") for d in range(10)
                for _ in range(1000)]  # fmt: skip
    fixed = (corpus.IMAGE_PROMPTS + corpus.AUDIO_PROMPTS + corpus.IMAGE_CAPTIONS
             + corpus.AUDIO_CAPTIONS + corpus.QUESTIONS)  # fmt: skip
    training += [wording.fill(t, d) for t in fixed for d in range(10)]
    training += list(sources.digit_sentences())  # the text BPE's own sentences
    seen = set().union(*map(_words, training))
    assert not seen & wording.RESERVED, sorted(seen & wording.RESERVED)
    for t in wording.UNSEEN_IMAGE_PROMPTS + wording.UNSEEN_AUDIO_PROMPTS:
        assert _words(t) & wording.RESERVED, f"{t!r} uses no reserved word"
        assert all(parse_digit(wording.fill(t, d)) == d for d in range(10))


def test_corpus_prompts_mix_fixed_and_free_wording(tmp_path):
    r = random.Random(2)
    pools = {"image": {d: ["x.png"] for d in range(10)}, "audio": {d: ["x.wav"] for d in range(10)}}
    for share, expect_free in ((0.0, False), (1.0, True)):
        cfg = corpus.CorpusConfig(free_wording=share)
        texts = [corpus._segments("text->image", 3, pools, r, cfg)[0]["text"] for _ in range(200)]
        fixed = {wording.fill(t, 3) for t in corpus.IMAGE_PROMPTS}
        n_fixed = sum(t in fixed for t in texts)
        assert (n_fixed < 100) if expect_free else (n_fixed == 200)


def test_made_up_filler_words_are_never_digits_nor_reserved(monkeypatch):
    r = random.Random(3)
    made_up = [wording.nonsense_word(r) for _ in range(5000)]
    assert len(set(made_up)) > 2000
    assert not set(made_up) & (set(wording.WORDS) | wording.RESERVED)
    assert all(parse_digit(w) == -1 for w in made_up)
    monkeypatch.setattr(wording, "nonsense_word", lambda r: "zzfiller")
    prompts = [wording.free_prompt(k, 4, r) for k in ("image", "audio") for _ in range(2000)]
    share = sum("zzfiller" in p.lower() for p in prompts) / len(prompts)
    assert abs(share - wording.FILLER_RATE) < 0.04, share
    assert all(parse_digit(p) == 4 for p in prompts)
