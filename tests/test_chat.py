"""The turn template (issue 19, instruction tuning): conversations in the JSONL schema become
``<user> ... <eot> <assistant> ... <eot>`` with the loss on the assistant's turns only,
and a model trained on them answers a user's turn and stops at ``<eot>``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from native_mm.documents import DocumentError, read_documents
from native_mm.sequence import SequenceCodec, SequenceError, Span, encode_document
from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import BOS, CHAT_SPECIALS, EOS
from tests.doubles import tokenizer_set


def _docs(tmp_path, *records) -> list:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return list(read_documents(path, check_media=False))


def _chat_set():
    t = tokenizer_set()
    return TokenizerSet(t.text, t.image, t.audio, image_max_grid=8, added=CHAT_SPECIALS)


CONVERSATION = {"id": "c1", "turns": [
    {"role": "user", "segments": [{"text": "hi"}]},
    {"role": "assistant", "segments": [{"text": "yo"}]},
    {"role": "user", "segments": [{"text": "and?"}]},
    {"role": "assistant", "segments": [{"text": "ok", "loss": False}, {"text": "!"}]},
]}  # fmt: skip


def test_turns_become_the_template_with_loss_on_the_assistant_only(tmp_path):
    [doc] = _docs(tmp_path, CONVERSATION)
    tset = _chat_set()
    enc = encode_document(doc, tset, SequenceCodec(tset.vocab))
    v, t0 = tset.vocab, tset.vocab.ranges["text"].start
    user, assistant, eot = (v.special_id(s) for s in CHAT_SPECIALS)

    def text(s):
        return list(t0 + np.frombuffer(s.encode(), np.uint8))

    want = [BOS, user, *text("hi"), eot, assistant, *text("yo"), eot, user, *text("and?"), eot,
            assistant, *text("ok"), *text("!"), eot, EOS]  # fmt: skip
    assert enc.ids.tolist() == want
    targets = [i for i, flag in zip(enc.ids.tolist(), enc.loss_mask, strict=True) if flag]
    # the assistant's words (its own loss: false kept) and the <eot> ending each of its turns
    assert targets == [*text("yo"), eot, *text("!"), eot, EOS]
    spans = SequenceCodec(v).decode(enc.ids)
    assert spans[0] == Span("special", [user]) and spans[-1] == Span("special", [eot])


def test_bad_conversations_are_named(tmp_path):
    bad = [
        {"id": "a", "turns": [{"role": "system", "segments": [{"text": "x"}]}]},
        {"id": "b", "turns": [{"role": "user", "segments": [{"text": "x"}]}]},
        {"id": "c", "turns": [], "segments": [{"text": "x"}]},
        {"id": "d", "turns": "hello"},
        {"id": "e", "turns": [{"role": "user", "segments": [{"picture": "x"}]}]},
    ]
    for record, field in zip(bad, ["turns[0].role", "turns", "turns", "turns",
                                   "turns[0].segments[0].picture"], strict=True):  # fmt: skip
        with pytest.raises(DocumentError) as e:
            _docs(tmp_path, record)
        assert e.value.field == field and "chat.jsonl:1" in str(e.value)


def test_a_set_without_the_chat_specials_says_how_to_add_them(tmp_path):
    [doc] = _docs(tmp_path, CONVERSATION)
    tset = tokenizer_set()
    with pytest.raises(SequenceError, match="no <user> token.*--add-specials"):
        encode_document(doc, tset, SequenceCodec(tset.vocab))


def test_a_chat_stage_answers_and_stops_at_end_of_turn(tokenizer_dir, tmp_path):
    """A tiny model fitted on conversations (a reply per question) answers a question it
    was trained on in the template, ends with <eot>, and a second turn sees the first."""
    from native_mm.pretrained import from_pretrained
    from native_mm.training.cli import make_cli
    from native_mm.training.shards import tokenize
    from tests.doubles import fit_args, step_losses

    base = TokenizerSet.load(tokenizer_dir)
    chat = TokenizerSet(base.text, base.image, base.audio, image_max_grid=16, added=CHAT_SPECIALS)
    chat.save(tmp_path / "chat_set")
    pairs = [("one", "two"), ("three", "four"), ("five", "six")]
    records = [{"id": f"c{i}", "turns": [
        {"role": "user", "segments": [{"text": q}]},
        {"role": "assistant", "segments": [{"text": a}]},
        {"role": "user", "segments": [{"text": "again"}]},
        {"role": "assistant", "segments": [{"text": a}]}]}
        for i, (q, a) in enumerate(pairs * 40)]  # fmt: skip
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenize([tmp_path / "chat.jsonl"], tmp_path / "shards", chat, workers=0, log=lambda s: None)
    make_cli(fit_args(tmp_path / "shards", tmp_path / "run", 80, "--model.lr", "0.02",
                      "--model.decay_steps", "80"))  # fmt: skip
    losses = step_losses(tmp_path / "run")
    assert losses[79] < 0.3 * losses[0]
    model = from_pretrained(tmp_path / "run/checkpoints/last.ckpt", tmp_path / "chat_set")
    for question, answer in pairs:
        [g] = model.chat([("user", question)], "text", temperature=0, max_new_tokens=12)
        assert g.finish_reason == "stop_token" and int(g.ids[-1]) == chat.vocab.special_id("<eot>")
        assert g.outputs == [answer]
        turns = [("user", question), ("assistant", answer), ("user", "again")]
        [g2] = model.chat(turns, "text", temperature=0, max_new_tokens=12)
        assert g2.outputs == [answer]  # the second turn refers to the first
