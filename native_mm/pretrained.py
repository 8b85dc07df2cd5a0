"""A released model in Python: load a model directory once, then generate any modality
from interleaved prompts of strings, PIL images and waveforms::

    from native_mm.pretrained import from_pretrained

    model = from_pretrained("models/digits")           # what `native-mm export` wrote
    [answer] = model.generate(["Draw the digit seven."], output="image")
    answer.outputs[0].save("seven.png")
    [answer] = model.generate([answer.outputs[0], "What digit is this?"], output="text")

The model's ``generation_config.json`` gives the sampling defaults per output modality
(as ``native-mm generate`` uses them); keyword arguments override them. The device and
dtype helpers here serve the ``generate`` and ``eval`` commands too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from native_mm import generation_config
from native_mm.checkpoint import CheckpointError, Pretrained, load_checkpoint
from native_mm.constraints import GenerationError, OutputSpec
from native_mm.generation import Generation, SamplingConfig, audio_frames_for, generate, stream
from native_mm.prompt_media import PromptMedia
from native_mm.release import find_checkpoint, find_tokenizers
from native_mm.tokenizers.base import TokenizerSet
from native_mm.vocab import EOS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_of(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``mps`` -> a device that is present, else a GenerationError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenerationError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"device {name!r}: no CUDA GPU is visible to PyTorch here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GenerationError(f"device {name!r}: only {torch.cuda.device_count()} GPUs here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GenerationError(f"device {name!r}: Apple's MPS backend is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise GenerationError(f"device {name!r}: use cpu, cuda, cuda:N or mps")
    return device


def dtype_of(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise GenerationError(f"unknown dtype {name!r}; have {sorted(DTYPES)}")
    return DTYPES[name]


def load(
    path: str | Path,
    tokenizers: str | Path | TokenizerSet | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[Pretrained, TokenizerSet]:
    """A checkpoint or model directory and its tokenizer set (given, or the model
    directory's / run's own ``tokenizers/``), on ``device`` in ``dtype`` (None: as stored).

    Raises:
        CheckpointError: no tokenizer set given or found, or one the model does not match.
        GenerationError: a device that is not present, an unknown dtype.
    """

    target, cast = device_of(device), dtype_of(dtype)
    if tokenizers is None:
        tokenizers = find_tokenizers(path)
        if tokenizers is None:
            raise CheckpointError(
                f"{path}: no tokenizers/ in it or beside it; give the "
                "tokenizer set (--tokenizers DIR)"
            )
    tset = tokenizers if isinstance(tokenizers, TokenizerSet) else TokenizerSet.load(tokenizers)
    pretrained = load_checkpoint(path, tset, map_location=str(target))
    if cast is not None and cast != pretrained.model.wte.weight.dtype:
        pretrained.model.to(cast)
    return pretrained, tset


@dataclass
class MultimodalModel:
    """A model with its tokenizers and sampling defaults, ready to generate."""

    pretrained: Pretrained
    tokenizers: TokenizerSet
    defaults: generation_config.GenerationDefaults

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        tokenizers: str | Path | None = None,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> MultimodalModel:
        """Load a model directory (``native-mm export``), a run directory or a checkpoint."""

        ckpt = find_checkpoint(path)
        pretrained, tset = load(ckpt, tokenizers, device, dtype)
        found = generation_config.find(ckpt)
        defaults = (
            generation_config.load(found) if found else generation_config.GenerationDefaults()
        )
        return cls(pretrained, tset, defaults)

    def prepare(
        self,
        prompt: Any,
        output: str | None,
        image_size: tuple[int, int] | None,
        audio_seconds: float | None,
        max_new_tokens: int,
        seed: int | None,
        sampling: dict,
        stop: Sequence[str] = (),
    ) -> tuple[list, OutputSpec, SamplingConfig, PromptMedia]:
        """A request in the API's terms -> what the library's generation takes (the
        model's sampling defaults under ``sampling``); also the server's entry."""
        unknown = sorted(set(sampling) - {*generation_config.KEYS, "prompt_image_size"})
        if unknown:
            raise GenerationError(
                f"unknown sampling options {unknown}; have "
                f"{[*generation_config.KEYS, 'prompt_image_size']}"
            )
        # strings, PIL images, waveforms, paths: see prompt_media.as_segment
        segments = [prompt] if isinstance(prompt, (str, Path)) else list(prompt)
        frames = None if audio_seconds is None else audio_frames_for(audio_seconds, self.tokenizers)
        stops = (EOS, *(self.tokenizers.vocab.special_id(name) for name in stop))
        spec = OutputSpec(output, image_size, frames, stop_tokens=stops)
        size = sampling.pop("prompt_image_size", None) or self.defaults.prompt_image_size
        settings = self.defaults.settings(output, sampling)
        config = SamplingConfig(max_new_tokens=max_new_tokens, seed=seed, **settings)
        return segments, spec, config, PromptMedia(size)

    def generate(
        self,
        prompt: str | Sequence[Any],
        output: str | None = None,
        *,
        num_samples: int = 1,
        image_size: tuple[int, int] | None = None,
        audio_seconds: float | None = None,
        max_new_tokens: int = 512,
        seed: int | None = 0,
        stop: Sequence[str] = (),
        **sampling: Any,
    ) -> list[Generation]:
        """Interleaved prompt in, one :class:`Generation` per sample out.

        Args:
            prompt: a string, or a sequence of strings, PIL images, Waveforms,
                ``(samples, sample_rate)`` arrays and image/audio paths, in order.
            output: force ``"text"``, ``"image"`` or ``"audio"`` (None: the model picks).
            image_size / audio_seconds: force the output image's grid (codes) or duration.
            stop: added specials that end the answer besides ``<eos>`` (e.g. ``"<eot>"``).
            sampling: ``temperature``, ``top_k``, ``top_p``, ``cfg_scale``,
                ``prompt_image_size`` over the model's generation config.
        """
        segments, spec, config, media = self.prepare(
            prompt, output, image_size, audio_seconds, max_new_tokens, seed, dict(sampling), stop
        )
        p = self.pretrained
        return generate(
            p.model, segments, self.tokenizers, spec, config, num_samples, p.layout, media
        )

    def chat(
        self, turns: Sequence[tuple[str, Any]], output: str | None = None, **options: Any
    ) -> list[Generation]:
        """The assistant's next turn after ``turns``: ``(role, prompt)`` pairs, role
        ``"user"`` or ``"assistant"``, each prompt a string, an item or a list of items as
        :meth:`generate` takes them. The model (a chat stage's, whose set holds
        :data:`~native_mm.vocab.CHAT_SPECIALS`) answers in the turn template it was trained
        on and stops at ``<eot>``; ``options`` as for :meth:`generate`."""
        segments: list[Any] = []
        for k, (role, prompt) in enumerate(turns):
            if role not in ("user", "assistant"):
                raise GenerationError(f"turn {k}: role must be user or assistant, got {role!r}")
            items = list(prompt) if isinstance(prompt, list) else [prompt]
            segments += [("special", f"<{role}>"), *items, ("special", "<eot>")]
        segments.append(("special", "<assistant>"))
        return self.generate(segments, output, stop=("<eot>",), **options)

    def stream(
        self,
        prompt: str | Sequence[Any],
        output: str | None = None,
        *,
        max_new_tokens: int = 512,
        seed: int | None = 0,
        **sampling: Any,
    ) -> Iterator[Any]:
        """Decoded outputs (``str``, PIL image, Waveform) as each segment finishes."""
        segments, spec, config, media = self.prepare(
            prompt, output, None, None, max_new_tokens, seed, dict(sampling)
        )
        p = self.pretrained
        for _, media_out in stream(
            p.model, segments, self.tokenizers, spec, config, 1, p.layout, media
        ):
            yield media_out


def from_pretrained(
    path: str | Path,
    tokenizers: str | Path | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> MultimodalModel:
    """:meth:`MultimodalModel.from_pretrained`."""
    return MultimodalModel.from_pretrained(path, tokenizers, device, dtype)
