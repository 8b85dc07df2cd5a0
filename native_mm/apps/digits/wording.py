"""Free wording for the digits corpus: the many ways people ask for a digit.

Training prompts come from a small grammar (politeness and fillers, verbs, numerals or
words, word order, punctuation, casing and the odd typo) beside the fixed templates of
:mod:`native_mm.apps.digits.corpus`. Evaluation asks with :data:`UNSEEN_IMAGE_PROMPTS` and
:data:`UNSEEN_AUDIO_PROMPTS`, phrasings built on words the grammar never uses
(:data:`RESERVED`), so that the "unseen wording" rows measure wordings the model never
read (``tests/test_wording.py`` checks that no training prompt contains them).

Some training prompts also carry a made-up filler word (:func:`nonsense_word`): people's
requests hold words a small corpus never has, and a model that has met unknown words
learns to look past them to the digit instead of being thrown by them.
"""

from __future__ import annotations

import random
import re

from native_mm.apps.digits.speech import WORDS

_OPENERS = (
    "", "", "", "please ", "please, ", "can you ", "could you ", "would you ", "now ", "ok, ",
    "hey, ", "i'd like you to ", "i want you to ", "go ahead and ", "kindly ", "try to ",
)  # fmt: skip
_CLOSERS = ("", "", "", " please", ", please", " for me", "!", ".", " now", ", thanks")
_IMAGE_VERBS = (
    "draw", "write", "show", "show me", "make", "give me", "generate", "create", "produce",
    "paint", "render", "display", "print", "write down", "draw me",
)  # fmt: skip
_AUDIO_VERBS = (
    "say", "speak", "pronounce", "read out", "read", "voice", "tell me", "play", "generate",
    "record", "speak out", "say out loud", "call out",
)  # fmt: skip
_IMAGE_OBJECTS = (
    "a {w}", "the {w}", "{w}", "{d}", "a {d}", "the digit {d}", "the digit {w}",
    "the number {d}", "the number {w}", "number {d}", "a handwritten {w}", "a handwritten {d}",
    "an image of a {w}", "an image of the number {d}", "a picture of a {w}", "a {w} by hand",
    "the handwritten digit {w}", "a written {d}",
)  # fmt: skip
_AUDIO_OBJECTS = (
    "{w}", "{d}", "the word {w}", "the number {w}", "the number {d}", "the digit {d}",
    "the digit {w}", "number {d}", "a spoken {w}", "{w} out loud", "the sound of {w}",
    "a recording of {w}", "{w} in a clear voice", "the spoken number {d}",
)  # fmt: skip
_IMAGE_WANTS = (
    "i want a {w}", "i'd like a {d}", "i want to see a {w}", "i need a {w}", "{w} please",
    "{d} please", "how about a {w}", "can i have a {w}", "a {w}, please", "show a {d}",
    "i would like the number {d}", "what does a handwritten {w} look like",
)  # fmt: skip
_AUDIO_WANTS = (
    "i want to hear {w}", "i want to hear a {w}", "i'd like to hear {d}", "let me hear {w}",
    "can i hear {w}", "how does {w} sound", "{w} please", "{d} please", "i need {w} spoken",
    "what does {d} sound like", "how do you say {w}", "i would like to hear the number {d}",
)  # fmt: skip

# Words that appear only in the evaluation's unseen wordings, never in a training prompt.
RESERVED = frozenset({
    "sketch", "doodle", "scribble", "jot", "numeral", "figure", "symbol", "glyph", "quick",
    "utter", "recite", "announce", "aloud", "vocalize", "let's", "hum",
})  # fmt: skip
UNSEEN_IMAGE_PROMPTS = (
    "sketch a {w}", "could i get a doodle of the numeral {d}?", "scribble the figure {w}",
    "jot down a {d}", "i need the symbol for {w}", "quick, a {d}!", "let's see the numeral {w}",
    "doodle {w} for me", "the glyph for {d}, handwritten", "sketch me the figure {d}",
)  # fmt: skip
UNSEEN_AUDIO_PROMPTS = (
    "utter the word {w}", "recite {d}", "announce the numeral {w}", "{w}, aloud",
    "could you vocalize {d}?", "let's hear {w}", "quick, recite {w}!", "utter {d} aloud",
    "announce {w}", "hum... no, recite the figure {d}",
)  # fmt: skip


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st",
           "pl", "gr", "sh", "ch", "tr", "fl")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "ou")
_CODAS = ("", "", "", "n", "m", "t", "k", "s", "ng", "rd", "sh", "x")
FILLER_RATE = 0.25  # share of free prompts with a made-up word inserted


def nonsense_word(r: random.Random) -> str:
    """A pronounceable made-up word of one to three syllables ("brooshek"), never a digit
    word nor a reserved word of the unseen wordings."""
    while True:
        w = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)
                    for _ in range(r.randint(1, 3)))  # fmt: skip
        if w not in WORDS and w not in RESERVED:
            return w


def _with_filler(text: str, r: random.Random) -> str:
    words = text.split(" ")
    i = r.randint(0, len(words))
    return " ".join(words[:i] + [nonsense_word(r)] + words[i:])


def fill(template: str, digit: int) -> str:
    """A wording template with ``{d}`` (numeral), ``{w}`` (word), ``{W}`` (Word) filled."""
    w = WORDS[digit]
    return template.format(d=digit, w=w, W=w.capitalize())


def _typo(text: str, r: random.Random) -> str:
    """One slip of the keyboard (swap, drop or double a letter) in a word of 4+ letters
    that is not the digit itself, so the request stays answerable."""
    words = text.split(" ")
    cands = [i for i, t in enumerate(words) if len(t) >= 4 and t.isalpha()
             and t.lower() not in WORDS]  # fmt: skip
    if not cands:
        return text
    i = r.choice(cands)
    t, j = words[i], r.randrange(1, len(words[i]) - 1)
    kind = r.randrange(3)
    words[i] = (t[:j] + t[j + 1] + t[j] + t[j + 2 :] if kind == 0 else
                t[:j] + t[j + 1 :] if kind == 1 else t[:j] + t[j] + t[j:])  # fmt: skip
    return " ".join(words)


def _case(text: str, r: random.Random) -> str:
    u = r.random()
    if u < 0.65:
        return text
    if u < 0.9:
        return text[:1].upper() + text[1:]
    if u < 0.96:
        return re.sub(r"\b[a-z]", lambda m: m.group(0).upper(), text)
    return text.upper()


def free_prompt(kind: str, digit: int, r: random.Random) -> str:
    """A request for an ``kind`` ("image" | "audio") of ``digit`` in free wording."""
    verbs, objects, wants = ((_IMAGE_VERBS, _IMAGE_OBJECTS, _IMAGE_WANTS) if kind == "image"
                             else (_AUDIO_VERBS, _AUDIO_OBJECTS, _AUDIO_WANTS))  # fmt: skip
    if r.random() < 0.3:
        text = fill(r.choice(wants), digit) + r.choice(("", "", "?", ".", "!"))
    else:
        body = f"{r.choice(verbs)} {fill(r.choice(objects), digit)}"
        text = r.choice(_OPENERS) + body + r.choice(_CLOSERS)
        if text.startswith(("can ", "could ", "would ")) and r.random() < 0.6:
            text = text.rstrip(".!") + "?"
    if r.random() < FILLER_RATE:
        text = _with_filler(text, r)
    if r.random() < 0.12:
        text = _typo(text, r)
    return _case(text, r)
