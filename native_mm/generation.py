"""Generation: any modality from an interleaved prompt, token by token.

Layers, lowest first (each usable alone):

* :func:`sample_next` -- temperature / top-k / top-p sampling of ``(B, V)`` logits.
* :class:`~native_mm.constraints.DecodeConstraint` (own module) -- a vectorised state
  machine over the sequence layout of ``native_mm.sequence`` that gives, per row and
  step, the ids allowed next: in text, text pieces, ``<eos>`` and the span openers;
  after ``<boi>`` two grid tokens, then exactly h*w image codes, then ``<eoi>``;
  after ``<boa>`` the code of level ``i mod Q`` at position i and ``<eoa>`` only at a
  frame boundary (or exactly at a forced duration). It also keeps every span closable
  within the token budget.
* :func:`stream_ids` / :func:`generate_ids` -- batched generation over a
  :class:`~native_mm.model.Transformer` from prompt ids (KV cache or full recompute),
  streaming :class:`StepEvent` s with each row's new token and its finished spans.
* :func:`generate` -- prompt segments (text / image path / audio path) in, decoded
  text, PIL images and waveforms out, through a :class:`TokenizerSet`. The
  ``native-mm generate`` verb is :mod:`native_mm.generate_cli`.

Classifier-free guidance (image and audio outputs). The conditional stream is the
prompt followed by the span opener; the **unconditional prompt is ``<bos>`` followed by
the same opener** (``<bos> <boi>`` or ``<bos> <boa>``), i.e. the document with all
conditioning removed. Training teaches that distribution by dropping the conditioning
before a media span with a configured probability (``<uncond>`` is not used). Both
streams run in one batch; at each step ``logits = uncond + scale * (cond - uncond)``
before the constraint mask and sampling, and the sampled token is fed to both.

Batches of prompts of different lengths are left padded (see ``native_mm.model``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from native_mm.constraints import (
    CLOSERS,
    MODALITY_OPENERS,
    TEXT_STATE,
    DecodeConstraint,
    GenerationError,
    OutputSpec,
)
from native_mm.layouts import Layout
from native_mm.model import Transformer
from native_mm.prompt_media import (
    PromptError,
    PromptMedia,
    added_special,
    audio_seconds,
    check_audio_fits,
    fit_image,
    kind_and_value,
    path_problem,
)
from native_mm.sampling import SamplingConfig, sample_next
from native_mm.sequence import SequenceCodec, Span
from native_mm.vocab import BOA, BOI, BOS, PAD, Vocab

UNCOND_PREFIX: tuple[int, ...] = (BOS,)  # unconditional prompt = UNCOND_PREFIX + opener
ANSWER_ROOM = 2  # context a prompt leaves at least: a span opener and one new token


# ---- the generation loop -------------------------------------------------------------------
@dataclass
class StepEvent:
    """One generation step: each row's new token and the spans that just finished."""

    step: int
    tokens: Tensor  # (B,) the ids sampled this step (PAD for rows already finished)
    finished: Tensor  # (B,) bool, rows that are done after this step
    spans: list[tuple[int, Span]] = field(default_factory=list)  # (row, finished span)


@dataclass
class GeneratedIds:
    """One row's output: new ids, the spans they form, and why it stopped."""

    ids: np.ndarray  # (N,) generated ids (the forced span opener included, if any)
    spans: list[Span]
    finish_reason: str  # "stop_token", "span_closed" or "length"


def check_model_vocab(model: Transformer, vocab: Vocab) -> None:
    """A model and a tokenizer set that disagree on the vocabulary size: an error."""
    if model.config.vocab_size != vocab.size:
        raise GenerationError(
            f"the model has vocab_size={model.config.vocab_size} but the tokenizer set's "
            f"vocabulary has {vocab.size} ids: wrong tokenizer set for this model"
        )


def as_codec(codec: SequenceCodec | Vocab) -> SequenceCodec:
    """A codec as given, or a vocabulary's default one."""
    return codec if isinstance(codec, SequenceCodec) else SequenceCodec(codec)


def _as_prompts(prompt_ids: Sequence[Any], vocab: Vocab) -> list[Tensor]:
    prompts = [torch.as_tensor(np.asarray(p), dtype=torch.long).reshape(-1) for p in prompt_ids]
    if not prompts:
        raise GenerationError("no prompts given")
    for i, p in enumerate(prompts):
        if p.numel() == 0:
            raise PromptError(f"prompt {i} is empty (start it with <bos>)")
        if int(p.min()) < 0 or int(p.max()) >= vocab.size:
            raise PromptError(f"prompt {i} has ids outside the vocabulary [0, {vocab.size})")
    return prompts


def _left_pad(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """List of ``(L_b,)`` -> ids ``(B, L)`` left padded with PAD, pad counts ``(B,)``."""
    longest = max(len(r) for r in rows)
    idx = torch.full((len(rows), longest), PAD, dtype=torch.long)
    pad = torch.tensor([longest - len(r) for r in rows], dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, longest - len(r) :] = r
    return idx, pad


class _Runner:
    """The model over a shrinking batch, with a KV cache or recomputing all (reference):
    ``start`` -> next-token logits, ``step`` feeds a token per row, ``select`` keeps rows."""

    def __init__(self, model: Transformer, use_cache: bool, capacity: int) -> None:
        self.model, self.use_cache, self.capacity = model, use_cache, capacity

    def start(self, idx: Tensor, pad: Tensor | None) -> Tensor:
        if self.use_cache:
            self.cache = self.model.new_cache(idx.shape[0], self.capacity)
            return self.model.prefill(idx, self.cache, pad)
        self.seq, self.pad = idx, pad
        return self.model(idx, pad)[:, -1]

    def step(self, feed: Tensor) -> Tensor:
        if self.use_cache:
            return self.model.decode_step(feed, self.cache)
        self.seq = torch.cat([self.seq, feed[:, None]], dim=1)
        return self.model(self.seq, self.pad)[:, -1]

    def select(self, rows: Tensor) -> None:
        if self.use_cache:
            self.cache.select(rows)
        else:
            self.seq = self.seq[rows]
            self.pad = None if self.pad is None else self.pad[rows]


def _rows(prompts: list[Tensor], opener: int | None, cfg_on: bool) -> list[Tensor]:
    """The model's batch: the prompts, then (guidance) one unconditional row per prompt."""
    if cfg_on and opener is None:
        raise GenerationError(
            "classifier-free guidance needs a forced image or audio output modality"
        )
    return prompts + [torch.tensor([*UNCOND_PREFIX, opener])] * len(prompts) if cfg_on else prompts


def _budget(model: Transformer, prompt_len: int, con: Any, output: Any, sampling: Any) -> int:
    """New tokens that fit after the longest prompt; an error if a forced span cannot."""
    block = model.config.block_size
    if prompt_len >= block:
        raise PromptError(
            f"prompt of {prompt_len} tokens leaves no room in the context (block_size={block})"
        )
    n_steps = min(sampling.max_new_tokens, block - prompt_len)
    need = {"image": con.min_image_span - 1, "audio": con.min_audio_span - 1}
    if output.constrained and need.get(output.modality or "", 0) > n_steps:
        raise GenerationError(
            f"a {output.modality} span needs {need[output.modality]} more tokens but only "
            f"{n_steps} fit (max_new_tokens={sampling.max_new_tokens}, block_size={block}, "
            f"longest prompt {prompt_len})"
        )
    return n_steps


def _guided(logits: Tensor, cfg_scale: float | None) -> Tensor:
    """Classifier-free guidance: the batch's halves are conditional, then unconditional."""
    if cfg_scale is None:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


@torch.inference_mode()
def stream_ids(
    model: Transformer,
    prompt_ids: Sequence[Any],
    codec: SequenceCodec | Vocab,
    output: OutputSpec | None = None,
    sampling: SamplingConfig | None = None,
) -> Iterator[StepEvent]:
    """Generate from a batch of prompts, yielding a :class:`StepEvent` per step.

    Args:
        model: the transformer (put in eval mode by the caller).
        prompt_ids: B prompts, each a 1-D sequence of shared-vocabulary ids (usually
            starting with ``<bos>``); lengths may differ.
        codec: the vocabulary and media layouts the model was trained on (a bare
            :class:`Vocab` means its default layouts, every audio level).
        output: what to generate; a forced image/audio modality appends the span opener
            to every prompt and stops each row when that span closes.
        sampling: temperature, top-k/p, seed, guidance scale, cache use.
    """
    output, sampling = output or OutputSpec(), sampling or SamplingConfig()
    codec = as_codec(codec)
    prompts = _as_prompts(prompt_ids, codec.vocab)
    opener = MODALITY_OPENERS.get(output.modality or "")
    if opener is not None:
        prompts = [torch.cat([p, torch.tensor([opener])]) for p in prompts]
    b, cfg_on = len(prompts), sampling.cfg_scale is not None
    idx, pad = _left_pad(_rows(prompts, opener, cfg_on))
    con = DecodeConstraint(codec, b, model.config.padded_vocab_size, output)
    n_steps = _budget(model, idx.shape[1], con, output, sampling)
    con.state_after(prompts)
    device = model.wte.weight.device
    gen = (
        None if sampling.seed is None else torch.Generator(device=device).manual_seed(sampling.seed)
    )
    runner = _Runner(model, sampling.use_cache, idx.shape[1] + n_steps)
    logits = runner.start(idx.to(device), pad.to(device) if bool(pad.any()) else None)
    finished = torch.zeros(b, dtype=torch.bool)
    alive = torch.arange(b)  # batch rows still in the model's batch (finished ones leave)
    pending = [
        _open_span_tail(p) if con.state[i] != TEXT_STATE else [] for i, p in enumerate(prompts)
    ]
    start_closed = con.closed.clone()
    stop = torch.tensor(sorted(set(output.stop_tokens)), dtype=torch.long)
    for step in range(n_steps):
        logits = _guided(logits.float(), sampling.cfg_scale)  # (n, V) for the n alive rows
        if output.constrained:
            mask = con.allowed(n_steps - step)[alive].to(device)
        else:  # any valid id; the state machine still tracks spans for streaming
            mask = con.valid.expand(len(alive), -1).to(device, copy=True)
        tok = torch.full((b,), PAD, dtype=torch.long)
        tok[alive] = sample_next(logits.masked_fill(~mask, float("-inf")), sampling, gen).cpu()
        was_active, prev_state = ~finished, con.state.clone()
        con.advance(tok, was_active)
        done = torch.isin(tok, stop) & was_active
        if opener is not None:
            done |= con.closed > start_closed
        if step == n_steps - 1:
            done |= was_active
        spans = _collect_spans(codec, tok, prev_state, was_active, done, pending)
        finished = finished | done
        yield StepEvent(step, tok, finished.clone(), spans)
        if bool(finished.all()):
            break
        keep = ~finished[alive]
        if not bool(keep.all()):  # drop finished rows from the batch (and their cache)
            sel = torch.nonzero(keep).flatten()
            runner.select((torch.cat([sel, sel + len(alive)]) if cfg_on else sel).to(device))
            alive = alive[keep]
        feed = tok[alive]
        logits = runner.step((torch.cat([feed, feed]) if cfg_on else feed).to(device))


def _open_span_tail(prompt: Tensor) -> list[int]:
    """The ids of the span a prompt ends inside (from its last opener)."""
    ids = prompt.tolist()
    last = max(i for i, t in enumerate(ids) if t in (BOI, BOA))
    return ids[last:]


def _collect_spans(
    codec: SequenceCodec,
    tok: Tensor,
    prev_state: Tensor,
    active: Tensor,
    done: Tensor,
    pending: list[list[int]],
) -> list[tuple[int, Span]]:
    """Append each active row's token to its pending span; return the spans that ended.

    Constrained decoding only closes well-formed spans; without constraints a malformed
    span is dropped (non-strict decoding).
    """
    out = []
    text_r = codec.vocab.ranges["text"]
    for r in torch.nonzero(active).flatten().tolist():
        t, in_text = int(tok[r]), int(prev_state[r]) == TEXT_STATE
        if in_text and t in text_r:
            pending[r].append(t)
        elif in_text:  # an opener, <eos> or a stop id ends the text run
            if pending[r]:
                out.extend((r, sp) for sp in codec.decode_report(pending[r]).spans)
            pending[r] = [t] if t in (BOI, BOA) else []
        else:
            pending[r].append(t)
            if t in CLOSERS:
                out.extend((r, sp) for sp in codec.decode_report(pending[r]).spans)
                pending[r] = []
        if bool(done[r]) and pending[r] and pending[r][0] in text_r:
            out.extend((r, sp) for sp in codec.decode_report(pending[r]).spans)
            pending[r] = []
    return out


def generate_ids(
    model: Transformer,
    prompt_ids: Sequence[Any],
    codec: SequenceCodec | Vocab,
    output: OutputSpec | None = None,
    sampling: SamplingConfig | None = None,
) -> list[GeneratedIds]:
    """Run :func:`stream_ids` to the end; one :class:`GeneratedIds` per prompt."""
    output = output or OutputSpec()
    b = len(prompt_ids)
    ids: list[list[int]] = [[] for _ in range(b)]
    spans: list[list[Span]] = [[] for _ in range(b)]
    reason = ["length"] * b
    opener = MODALITY_OPENERS.get(output.modality or "")
    if opener is not None:
        ids = [[opener] for _ in range(b)]
    stop = set(output.stop_tokens)
    alive = [True] * b
    for event in stream_ids(model, prompt_ids, codec, output, sampling):
        for r in range(b):
            if alive[r]:
                t = int(event.tokens[r])
                ids[r].append(t)
                if bool(event.finished[r]):
                    alive[r] = False
                    if t in stop:
                        reason[r] = "stop_token"
                    elif opener is not None and t in CLOSERS:
                        reason[r] = "span_closed"
        for r, span in event.spans:
            spans[r].append(span)
    return [
        GeneratedIds(np.array(i, dtype=np.int64), s, f)
        for i, s, f in zip(ids, spans, reason, strict=True)
    ]


# ---- media level: prompt segments in, text / images / waveforms out -------------------------
@dataclass
class Generation:
    """One sample: decoded outputs (``str``, ``PIL.Image.Image``, ``Waveform``) and ids."""

    outputs: list[Any]
    spans: list[Span]
    ids: np.ndarray
    finish_reason: str


def encode_prompt(
    prompt_segments: Sequence[Any],
    tokenizers: Any,
    layout: Layout | None = None,
    media: PromptMedia | None = None,
    block_size: int | None = None,
) -> np.ndarray:
    """Prompt segments -> ids ``(L,)``: ``<bos>`` then each segment's span, no ``<eos>``
    (media in ``layout``; None = the vocabulary's default layouts).

    Images and clips are brought to what the model takes (:mod:`native_mm.prompt_media`:
    ``media`` sizes images; a clip that cannot fit into the model's context
    ``block_size``, with room for the answer, is refused before it is decoded).

    Raises:
        PromptError: unknown kind, a missing file or one that is not a regular file, media
            its tokenizer rejects, a clip or prompt too long for ``block_size``; the
            message names the segment, the file and the limit.
    """
    media = media or PromptMedia()
    room = None if block_size is None else block_size - ANSWER_ROOM
    codec = SequenceCodec(tokenizers.vocab, layout)
    parts, used = [np.array([BOS])], 1
    for k, seg in enumerate(prompt_segments):
        kind, value = kind_and_value(seg, k)
        if kind == "special":  # a turn's role marker or <eot> (an added special)
            parts.append(np.array([added_special(tokenizers.vocab, value, k)]))
            used += 1
            continue
        if kind not in ("text", "image", "audio"):
            raise PromptError(f"prompt segment {k}: unknown kind {kind!r}")
        where = f"prompt segment {k} ({kind})"
        if kind != "text" and isinstance(value, (str, Path)):
            where = f"prompt segment {k} ({kind} {value})"
            problem = path_problem(value)
            if problem:
                raise PromptError(f"{where}: {problem}")
        try:
            tok = tokenizers[kind]
        except ValueError as e:
            raise PromptError(f"{where}: {e}") from None
        try:
            if kind == "image" and hasattr(tok, "load_rgb"):
                left = None if room is None else room - used
                grid, raster = tokenizers.vocab.image_max_grid, codec.layout.media("image")
                value = fit_image(tok.load_rgb(value), tok, grid, media, where, left, raster)
            elif kind == "audio" and room is not None:
                seconds = audio_seconds(value)
                if seconds is not None:
                    frames = codec.layout.media("audio")
                    check_audio_fits(seconds, tok, frames, room - used, where)
            codes = tok.encode(value)
        except PromptError:
            raise
        except (ValueError, OSError) as e:  # MediaError is a ValueError
            raise PromptError(f"{where}: {e}") from None
        parts.append(codec.encode([Span(kind, codes)], bos=False, eos=False).ids)
        used += len(parts[-1])
        if room is not None and used > room:
            raise PromptError(
                f"{where}: the prompt is {used} tokens up to here; the model takes {room} "
                f"(block_size={block_size} less {ANSWER_ROOM} for the answer)"
            )
    return np.concatenate(parts).astype(np.int64)


def audio_frames_for(seconds: float, tokenizers: Any) -> int:
    """Audio duration in seconds -> code frames, from the audio tokenizer's frame rate."""
    rate = tokenizers["audio"].frame_rate  # part of the tokenizer interface
    if not rate:
        raise GenerationError("the audio tokenizer has no frame_rate; give audio_frames")
    return max(1, round(seconds * rate))


def stream(
    model: Transformer,
    prompt_segments: Sequence[Any],
    tokenizers: Any,
    output: OutputSpec | None = None,
    sampling: SamplingConfig | None = None,
    num_samples: int = 1,
    layout: Layout | None = None,
    media: PromptMedia | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(sample index, decoded output)`` as soon as each segment finishes."""
    check_model_vocab(model, tokenizers.vocab)
    codec = SequenceCodec(tokenizers.vocab, layout)
    prompt = encode_prompt(
        prompt_segments, tokenizers, codec.layout, media, model.config.block_size
    )
    for event in stream_ids(model, [prompt] * num_samples, codec, output, sampling):
        for r, span in event.spans:
            yield r, tokenizers[span.kind].decode(span.codes)


def generate(
    model: Transformer,
    prompt_segments: Sequence[Any],
    tokenizers: Any,
    output: OutputSpec | None = None,
    sampling: SamplingConfig | None = None,
    num_samples: int = 1,
    layout: Layout | None = None,
    media: PromptMedia | None = None,
) -> list[Generation]:
    """Interleaved prompt in, decoded outputs out.

    Args:
        model: the transformer (eval mode), e.g. from :func:`load_checkpoint`.
        prompt_segments: ``Segment`` s, ``(kind, value)`` pairs or ``{kind: value}`` dicts;
            text values are strings, image/audio values paths (or PIL images / Waveforms).
        tokenizers: the :class:`~native_mm.tokenizers.base.TokenizerSet` of the model.
        output: what to generate (forced modality, image size, audio frames).
        sampling: sampling options.
        num_samples: samples drawn for the prompt (one batch).
        layout: the media layouts the model was trained on (``load_checkpoint(...).layout``;
            None = the vocabulary's defaults).
        media: how prompt images are sized (:class:`~native_mm.prompt_media.PromptMedia`;
            None = the tokenizer's policy, shrunk to the largest grid the model takes).

    Returns:
        One :class:`Generation` per sample; ``outputs`` are decoded with
        :func:`native_mm.sequence.decode_spans`.
    """
    from native_mm.sequence import decode_spans

    check_model_vocab(model, tokenizers.vocab)
    codec = SequenceCodec(tokenizers.vocab, layout)
    prompt = encode_prompt(
        prompt_segments, tokenizers, codec.layout, media, model.config.block_size
    )
    rows = generate_ids(model, [prompt] * num_samples, codec, output, sampling)
    return [
        Generation(decode_spans(g.spans, tokenizers), g.spans, g.ids, g.finish_reason) for g in rows
    ]
