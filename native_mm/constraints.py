"""Modality-constrained decoding: what to generate, and the ids allowed at each step.

:class:`OutputSpec` says what a request wants (a forced modality, image grid, audio
length); :class:`DecodeConstraint` is the per-row state machine over the sequence layout
of ``native_mm.sequence`` that turns it into an allowed-id mask at every step. It sees
ids only (no model), so tests and fuzzers drive it alone; ``generation.py`` applies it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from native_mm.sequence import SequenceCodec
from native_mm.vocab import BOA, BOI, EOA, EOI, EOS, PAD

MODALITY_OPENERS = {"image": BOI, "audio": BOA}
CLOSERS = (EOI, EOA)


class GenerationError(ValueError):
    """A generation request that cannot be served (bad option, prompt too long, ...)."""


def number_problem(
    value: object, low: float | None = None, high: float | None = None, integer: bool = False,
    low_open: bool = False,
) -> str | None:  # fmt: skip
    """What is wrong with an option's ``value`` ("must be finite"), or None when it is a
    finite number (a whole one if ``integer``) in ``[low, high]`` (``(low`` if ``low_open``)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"must be {'a whole number' if integer else 'a number'}"
    if not math.isfinite(value):
        return "must be finite"
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}]"
        return f"must be in {lo}, {hi}"
    return None


def check_number(name: str, value: object, *args: object, **kwargs: object) -> None:
    """A :class:`GenerationError` naming the option ``name`` if :func:`number_problem`."""
    problem = number_problem(value, *args, **kwargs)  # type: ignore[arg-type]
    if problem:
        raise GenerationError(f"{name} {problem}, got {value!r}")


# ---- modality-constrained decoding ---------------------------------------------------------
TEXT_STATE, IMG_H, IMG_W, IMG_CODES, AUDIO_STATE, DONE = range(6)


@dataclass
class OutputSpec:
    """What to generate."""

    modality: str | None = None  # "text" (>= 1 text piece), "image", "audio", or None (any)
    image_size: tuple[int, int] | None = None  # forced image grid (h, w) in codes
    audio_frames: int | None = None  # forced audio length in code frames
    max_image_grid: int | None = None  # largest grid side the model may pick (None = vocab's)
    constrained: bool = True  # apply the layout state machine (False: only valid ids)
    stop_tokens: tuple[int, ...] = (EOS,)  # a row stops after emitting any of these

    def __post_init__(self) -> None:
        if self.modality not in (None, "text", "image", "audio"):
            raise GenerationError(
                f"output modality must be text, image, audio or None, got {self.modality!r}"
            )
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2:
                raise GenerationError(f"image_size must be (h, w), got {self.image_size!r}")
            for s in size:
                check_number("image_size", s, 1, integer=True)
            self.image_size = tuple(int(s) for s in size)  # type: ignore[assignment]
        if self.audio_frames is not None:
            check_number("audio_frames", self.audio_frames, 1, integer=True)
        if self.max_image_grid is not None:
            check_number("max_image_grid", self.max_image_grid, 1, integer=True)


class DecodeConstraint:
    """Per-row layout state and the allowed-id mask of the next step.

    State per row: ``state`` (TEXT/IMG_H/IMG_W/IMG_CODES/AUDIO/DONE), ``count`` (codes
    emitted in the open span), ``grid_h``/``target`` (image grid height and h*w) and
    ``closed`` (spans closed so far). All are ``(B,)`` tensors, updated by
    :meth:`advance`; :meth:`allowed` builds the ``(B, width)`` mask.

    Args:
        codec: the sequence layout (vocabulary and audio levels per frame).
        batch_size: rows B.
        width: mask width (the model's padded vocabulary; ids >= vocab size never allowed).
        spec: the output options (forced sizes, which span openers text may use).
    """

    def __init__(self, codec: SequenceCodec, batch_size: int, width: int, spec: OutputSpec):
        v, self.codec, self.spec = codec.vocab, codec, spec
        self.layout = codec.layout  # what may come inside an image or audio span
        self.q = codec.audio_levels
        grid_r = v.ranges["image_grid"]
        self.g0, self.n_grid = grid_r.start, grid_r.size
        self.max_grid = min(spec.max_image_grid or self.n_grid, self.n_grid)
        if spec.image_size and max(spec.image_size) > self.n_grid:
            raise GenerationError(
                f"image_size {spec.image_size} exceeds the vocabulary's grid limit {self.n_grid}"
            )
        if (spec.image_size or spec.modality == "image") and not v.image_codes:
            raise GenerationError("image output requested but the vocabulary has no image range")
        if (spec.audio_frames or spec.modality == "audio") and not self.q:
            raise GenerationError("audio output requested but the vocabulary has no audio range")
        b = batch_size
        self.state = torch.full((b,), TEXT_STATE, dtype=torch.long)
        self.count = torch.zeros(b, dtype=torch.long)
        self.grid_h = torch.zeros(b, dtype=torch.long)
        self.target = torch.zeros(b, dtype=torch.long)
        self.closed = torch.zeros(b, dtype=torch.long)
        self.text_out = torch.zeros(b, dtype=torch.long)  # text pieces generated (not prompt)
        # Base masks per state; budget- and row-dependent parts are added in allowed().
        base = torch.zeros(6, width, dtype=torch.bool)
        text_r, img_r = v.ranges["text"], v.ranges["image"]
        self.t0, self.t1 = text_r.start, text_r.stop
        base[TEXT_STATE, text_r.start : text_r.stop] = True
        self.stops = sorted({EOS, *(t for t in spec.stop_tokens if 0 <= t < v.size)})
        base[TEXT_STATE, self.stops] = True  # <eos>, or e.g. a chat turn's <eot>
        self.open_image = bool(v.image_codes) and spec.modality in (None, "image")
        self.open_audio = bool(self.q) and spec.modality in (None, "audio")
        base[TEXT_STATE, BOI] = self.open_image
        base[TEXT_STATE, BOA] = self.open_audio
        base[IMG_CODES, img_r.start : img_r.stop] = True
        base[DONE, PAD] = True
        self.base = base
        # (Q, width): the ids of audio level q.
        self.levels = torch.zeros(max(self.q, 1), width, dtype=torch.bool)
        for q, start in enumerate(self.layout.audio.offsets(v) if self.q else []):
            self.levels[q, start : start + v.audio_codes] = True
        self.valid = torch.zeros(width, dtype=torch.bool)
        self.valid[: v.size] = True
        # Shortest spans the budget must hold before an opener is allowed.
        h, w = spec.image_size or (1, 1)
        self.min_image_span = self.layout.image.span_length(h, w) if self.layout.image else 0
        frames = spec.audio_frames or 1
        self.min_audio_span = self.layout.audio.span_length(frames) if self.q else 0

    def advance(self, tokens: Tensor, active: Tensor | None = None) -> None:
        """Move every active row's state past its token ``(B,)``."""
        tokens = tokens.cpu()
        act = torch.ones_like(tokens, dtype=torch.bool) if active is None else active.cpu()
        s = self.state
        in_text = act & (s == TEXT_STATE)
        to_img, to_aud = in_text & (tokens == BOI), in_text & (tokens == BOA)
        to_done = in_text & (tokens == EOS)
        got_h, got_w = act & (s == IMG_H), act & (s == IMG_W)
        img_code = act & (s == IMG_CODES) & (tokens != EOI)
        aud_code = act & (s == AUDIO_STATE) & (tokens != EOA)
        closing = act & (
            ((s == IMG_CODES) & (tokens == EOI)) | ((s == AUDIO_STATE) & (tokens == EOA))
        )
        g = (tokens - self.g0 + 1).clamp(min=0)  # grid value if the token is a grid token
        self.grid_h = torch.where(got_h, g, self.grid_h)
        self.target = torch.where(got_w, self.grid_h * g, self.target)
        self.count = torch.where(to_img | to_aud | got_w, 0, self.count)
        self.count = self.count + (img_code | aud_code).long()
        self.closed = self.closed + closing.long()
        self.text_out = self.text_out + (in_text & (tokens >= self.t0) & (tokens < self.t1)).long()
        new = s.clone()
        new[to_img], new[to_aud], new[to_done] = IMG_H, AUDIO_STATE, DONE
        new[got_h], new[got_w], new[closing] = IMG_W, IMG_CODES, TEXT_STATE
        self.state = new

    def allowed(self, budget: int) -> Tensor:
        """``(B, width)`` bool: ids allowed next when ``budget`` tokens (>= 1) remain.

        The budget keeps spans closable: an image is opened only if a 1x1 image still fits,
        grid sizes are limited so that h*w codes and ``<eoi>`` fit, and audio stops at a
        frame boundary when another frame and ``<eoa>`` would not fit.
        """
        s = self.state
        mask = self.base[s]  # (B, width), a copy; every base row holds valid ids only
        present = set(s.unique().tolist())  # skip the work of states no row is in
        text = s == TEXT_STATE
        if TEXT_STATE in present and budget < self.min_image_span:
            mask[text, BOI] = False
        if TEXT_STATE in present and budget < self.min_audio_span:
            mask[text, BOA] = False
        if TEXT_STATE in present and self.spec.modality == "text":
            empty = torch.nonzero(text & (self.text_out == 0)).flatten()
            mask[empty[:, None], self.stops] = False  # a forced text answer is not empty
        if present & {IMG_H, IMG_W, IMG_CODES}:
            self._image_rows(mask, budget)
        if AUDIO_STATE in present:
            self._audio_rows(mask, budget)
        return mask

    def _image_rows(self, mask: Tensor, budget: int) -> None:
        """Grid tokens for rows after ``<boi>``; ``<eoi>`` only once h*w codes are out."""
        s, spec = self.state, self.spec
        # Height so that the w token, >= h codes and <eoi> fit, then width so h*w fit.
        gv = torch.arange(1, self.n_grid + 1)  # (G,)
        if spec.image_size:
            h_ok = (gv == spec.image_size[0]).expand(len(s), -1)
            w_ok = (gv == spec.image_size[1]).expand(len(s), -1)
        else:
            h_ok = (gv <= min(self.max_grid, budget - 3)).expand(len(s), -1)
            w_ok = (gv[None] <= self.max_grid) & (self.grid_h[:, None] * gv[None] <= budget - 2)
        grid = slice(self.g0, self.g0 + self.n_grid)
        mask[:, grid] |= torch.where((s == IMG_H)[:, None], h_ok, False)
        mask[:, grid] |= torch.where((s == IMG_W)[:, None], w_ok, False)
        full = (s == IMG_CODES) & (self.count >= self.target)
        mask[full] = False
        mask[full, EOI] = True

    def _audio_rows(self, mask: Tensor, budget: int) -> None:
        """The level of audio position i is i mod Q; ``<eoa>`` only at a frame boundary."""
        aud, spec = self.state == AUDIO_STATE, self.spec
        level = self.layout.audio.level_at(self.count)
        mask |= self.levels[level] & aud[:, None]
        boundary = aud & (level == 0)
        if spec.audio_frames:
            at_end = boundary & (self.count >= spec.audio_frames * self.q)
            mask[at_end] = False
            mask[at_end, EOA] = True
        else:
            mask[boundary & (self.count > 0), EOA] = True
            if budget < self.q + 1:  # another frame and <eoa> would not fit
                mask[boundary] = False
                mask[boundary, EOA] = True

    def state_after(self, prompts: list[Tensor]) -> None:
        """Feed left-aligned prompts (list of ``(L_b,)``) through :meth:`advance`."""
        longest = max(len(p) for p in prompts)
        for t in range(longest):
            toks = torch.tensor([int(p[t]) if t < len(p) else PAD for p in prompts])
            self.advance(toks, torch.tensor([t < len(p) for p in prompts]))
        self.text_out.zero_()  # count generated text only
