"""The digits SFT stage (issue 19): conversations from the train split's media in the
turn template, and the recipe that runs it (its smoke run is in test_pipeline.py)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from native_mm.apps.digits.corpus import CorpusConfig
from native_mm.apps.digits.evaluation import parse_digit
from native_mm.apps.digits.recipe import load_recipe
from native_mm.apps.digits.sft import KINDS, SFT_KEYS, build_conversations, conversation
from native_mm.documents import read_documents

REPO = Path(__file__).resolve().parents[1]


def test_conversations_are_valid_turns_with_loss_on_the_assistant(tmp_path):
    cfg = CorpusConfig(image_augment=0, audio_augment=0, max_images=30, max_clips=30)
    stats = build_conversations(cfg, 10, tmp_path)
    assert stats["conversations"] == 10 * len(KINDS)
    docs = list(read_documents(tmp_path / "documents.jsonl"))  # media checked on disk
    assert Counter(d.id.rsplit("-", 1)[0] for d in docs) == {k: 10 for k in KINDS}
    for doc in docs:
        roles = [s.value for s in doc.segments if s.kind == "special" and s.value != "<eot>"]
        assert roles == ["<user>", "<assistant>", "<user>", "<assistant>"]
        said = [s for s in doc.segments if s.loss]
        assert said and all(s.kind != "special" or s.value == "<eot>" for s in said)
        digit = int(doc.id.rsplit("-", 1)[1]) % 10
        texts = [s.value for s in said if s.kind == "text"]
        if texts:  # the assistant names the conversation's digit
            assert parse_digit(texts[0]) == digit


def test_each_kind_refers_back_to_the_first_turn():
    r = random.Random(0)
    turns = conversation("image-text-audio", 7, "i.png", "h.wav", "s.wav", r)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["segments"][0] == {"image": "i.png"} and "seven" in str(turns[1])
    assert turns[3]["segments"] == [{"audio": "s.wav"}]  # says the clean clip, not the prompt
    turns = conversation("audio-text-image", 3, "i.png", "h.wav", "s.wav", r)
    assert turns[0]["segments"][0] == {"audio": "h.wav"} and turns[3]["segments"] == [
        {"image": "i.png"}]  # fmt: skip


def test_the_recipe_loads():
    for smoke in (False, True):
        recipe = load_recipe(REPO / "recipes/digits_sft.yaml", smoke=smoke, known=SFT_KEYS)
        assert (REPO / recipe["base_recipe"]).is_file() and recipe["conversations"] > 0
