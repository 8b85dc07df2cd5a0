"""DataModule over packed token shards: mixtures, packing, dropouts, exact resume.

Packing. Sample ``i`` (a global sample index) is a pure function of ``(seed, i)``: a
generator seeded with ``(seed, i)`` picks a source by the mixture weights and a start
document, then documents ``d, d+1, ...`` of that source (after the dropouts below) are
concatenated until ``T + 1`` tokens are filled; the last document is cut. Every
sequence therefore starts at a document boundary with ``<bos>``. Sampling is with
replacement (a nominal epoch is ``tokens / T`` samples).

Document boundaries. Attention is *not* masked across documents inside a packed
sequence (like GPT/LLaMA pretraining); instead the loss mask handles the boundary:

* target ``t`` is trained on only if ``loss[t]`` is set: prompt/context segments
  (``"loss": false``) and ``<bos>`` are never targets, so the model is never
  asked to predict the first token of an unrelated document from the previous one;
* ``<eos>`` is a target, so the model learns where documents end.

Modality dropout removes a whole ``<boi> ... <eoi>`` (or ``<boa> ... <eoa>``) span with
probability ``image_dropout`` / ``audio_dropout`` per span. ``text_dropout`` removes, with
its probability, each run of text between the media spans of a multimodal document (the
closing ``<eos>`` stays; documents without media spans are left alone), so a model cannot
always read the answer from the text when the image or audio gives it too.

Conditioning dropout (classifier-free guidance). With probability ``cond_dropout`` per
image/audio span, everything before the span's opening marker except ``<bos>`` is
removed, so the span is trained on as ``<bos> <boi> ...`` (or ``<bos> <boa> ...``): the
unconditional context that ``native_mm.generation`` uses for CFG (its ``UNCOND_PREFIX``
is ``<bos>``; ``<uncond>`` is not used). Content after the span is kept.

Prompt noise. With ``audio_prompt_noise`` each code of an audio span the loss does not
cover (a prompt, not a target) is replaced, with that probability, by a random code of its
RVQ level: the model learns to read speech through codes that differ from the ones it was
trained on, as an unseen voice's codes do (SpecAugment's idea, on tokens). Targets are
never noised.

Resume. The loader's position is ``batches_consumed`` (global batches), kept in the
DataModule's ``state_dict`` (saved in every Lightning checkpoint). Rank ``r`` of ``W``
draws samples ``g * B_global + r * B_local + j`` for global batch ``g``, so a run on
``W`` processes sees the same global batches as one process with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from native_mm.layouts import Layout, LayoutError
from native_mm.training.shard_reader import ShardSet
from native_mm.training.shards import ShardError
from native_mm.vocab import BOS, EOS, Vocab, manifest_digest


@dataclass
class DropoutConfig:
    """Per-span dropout probabilities applied when a document is packed."""

    image_dropout: float = 0.0  # drop a whole image span with this probability
    audio_dropout: float = 0.0  # drop a whole audio span with this probability
    cond_dropout: float = 0.0  # drop a media span's whole context -> <bos> <boi>... (CFG)
    text_dropout: float = 0.0  # drop each text run between media spans (multimodal docs)
    audio_prompt_noise: float = 0.0  # replace each code of an audio prompt with a random one

    def active(self) -> bool:
        return bool(
            self.image_dropout or self.audio_dropout or self.cond_dropout or self.text_dropout
        )


@dataclass(frozen=True)
class AudioCodes:
    """Where a vocabulary's audio codes lie: what ``audio_prompt_noise`` draws from."""

    offsets: np.ndarray  # (Q,) first id of each level the layout uses
    codes: int  # codes per level

    @classmethod
    def of(cls, vocab: Vocab, layout: Layout) -> AudioCodes | None:
        if not vocab.audio_codes:
            return None
        return cls(layout.resolved(vocab).audio.offsets(vocab), vocab.audio_codes)


def noise_audio_prompts(
    ids: np.ndarray, loss: np.ndarray, p: float, audio: AudioCodes, rng: np.random.Generator
) -> np.ndarray:
    """``ids`` with each code of the audio spans outside the loss replaced w.p. ``p``."""
    out = ids
    for start, stop, kind in Layout().find_spans(ids):
        if kind != "audio" or loss[start + 1 : stop - 1].any():
            continue
        n = stop - start - 2
        hit = np.flatnonzero(rng.random(n) < p)
        if hit.size:
            out = out.copy() if out is ids else out
            level = audio.offsets[hit % len(audio.offsets)]
            out[start + 1 + hit] = level + rng.integers(audio.codes, size=hit.size)
    return out


def transform_document(
    ids: np.ndarray,
    loss: np.ndarray,
    cfg: DropoutConfig,
    rng: np.random.Generator,
    audio: AudioCodes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply modality and conditioning dropout to one document (see module docstring)."""
    if cfg.audio_prompt_noise and audio is not None:
        ids = noise_audio_prompts(ids, loss, cfg.audio_prompt_noise, audio, rng)
    if not cfg.active():
        return ids, loss
    spans = Layout().find_spans(ids)
    if not spans:
        return ids, loss
    bos = 1 if len(ids) and ids[0] == BOS else 0
    pieces_ids, pieces_loss, pos = [ids[:bos]], [loss[:bos]], bos

    def text(a: int, b: int) -> None:  # the text run ids[a:b], unless text dropout drops it
        # no draw when text_dropout is 0: the other dropouts' random stream is unchanged
        if b > a and not (cfg.text_dropout and rng.random() < cfg.text_dropout):
            pieces_ids.append(ids[a:b])
            pieces_loss.append(loss[a:b])

    for start, stop, kind in spans:
        p_drop = cfg.image_dropout if kind == "image" else cfg.audio_dropout
        drop = rng.random() < p_drop
        uncond = rng.random() < cfg.cond_dropout
        if drop:
            text(pos, start)
        elif uncond:  # <bos> + the span: its whole conditioning context is dropped
            pieces_ids = [ids[:bos], ids[start:stop]]
            pieces_loss = [loss[:bos], loss[start:stop]]
        else:
            text(pos, start)
            pieces_ids.append(ids[start:stop])
            pieces_loss.append(loss[start:stop])
        pos = stop
    end = len(ids) - 1 if len(ids) > pos and ids[-1] == EOS else len(ids)
    text(pos, end)
    pieces_ids.append(ids[end:])
    pieces_loss.append(loss[end:])
    return np.concatenate(pieces_ids), np.concatenate(pieces_loss)


class PackedDataset(Dataset):
    """Map-style dataset: global sample index -> packed ``(T + 1)``-token window.

    Args:
        sources: shard sets to mix.
        weights: mixture weights (normalised), one per source.
        seq_len: ``T``; each item holds ``input`` and ``target`` of length ``T``.
        seed: sampling seed.
        dropout: span dropouts and prompt noise (training only).
        audio: the vocabulary's audio codes (needed by ``dropout.audio_prompt_noise``).
    """

    def __init__(
        self,
        sources: list[ShardSet],
        weights: list[float],
        seq_len: int,
        seed: int = 0,
        dropout: DropoutConfig | None = None,
        audio: AudioCodes | None = None,
    ) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        for s in sources:
            if len(s) == 0:
                raise ShardError(f"{s.path}: shard set holds no documents")
        self.sources, self.p = sources, w / w.sum()
        self.seq_len, self.seed = seq_len, seed
        self.dropout, self.audio = dropout or DropoutConfig(), audio
        if self.dropout.audio_prompt_noise and audio is None:
            raise ValueError("audio_prompt_noise needs the vocabulary's audio codes")

    def __len__(self) -> int:  # a nominal epoch; indices beyond it are valid too
        return max(1, sum(s.tokens for s in self.sources) // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        src = self.sources[int(rng.choice(len(self.sources), p=self.p))]
        doc = int(rng.integers(len(src)))
        need, ids_parts, loss_parts, have = self.seq_len + 1, [], [], 0
        while have < need:
            ids, loss = src.document(doc)
            ids, loss = transform_document(ids, loss, self.dropout, rng, self.audio)
            ids_parts.append(ids)
            loss_parts.append(loss)
            have += len(ids)
            doc = (doc + 1) % len(src)
        ids = np.concatenate(ids_parts)[:need]
        loss = np.concatenate(loss_parts)[:need]
        return {
            "input": torch.from_numpy(ids[:-1].copy()),
            "target": torch.from_numpy(ids[1:].copy()),
            "mask": torch.from_numpy(loss[1:].copy()),
        }


class ResumableBatchSampler(Sampler[list[int]]):
    """Global batch ``g`` -> this rank's sample indices; starts after ``start_batch``.

    ``len`` is a nominal epoch of ``epoch_batches`` global batches; epoch ``e`` covers
    global batches ``[e * epoch_batches, (e + 1) * epoch_batches)``.
    """

    def __init__(
        self,
        local_batch: int,
        rank: int,
        world: int,
        epoch_batches: int,
        start_batch: int = 0,
        offset: int = 0,
    ) -> None:
        self.local_batch, self.rank, self.world = local_batch, rank, world
        self.epoch_batches, self.start_batch, self.offset = epoch_batches, start_batch, offset
        self.epoch = start_batch // epoch_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_batches

    def __iter__(self) -> Iterator[list[int]]:
        first = self.epoch * self.epoch_batches
        begin = max(self.start_batch - first, 0)
        g_batch = self.local_batch * self.world
        for b in range(begin, self.epoch_batches):
            base = self.offset + (first + b) * g_batch + self.rank * self.local_batch
            yield list(range(base, base + self.local_batch))


class ShardLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable: the position lives in the sampler,
    restored from :meth:`ShardDataModule.load_state_dict` before the loader is built."""

    def state_dict(self) -> dict:
        return {"batch_sampler": type(self.batch_sampler).__name__}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class SourceSpec:
    """One shard directory of the mixture."""

    path: str  # shard directory written by `native-mm tokenize`
    weight: float = 1.0  # mixture weight (normalised over sources)


class ShardDataModule(L.LightningDataModule):
    """Packed, mixed, resumable batches from shard directories.

    Args:
        sources: training shard directories with mixture weights.
        val_sources: held-out shard directories (None = no validation).
        seq_len: tokens per sequence ``T`` (inputs; windows are ``T + 1`` long).
        batch_size: GLOBAL batch size (split evenly over ranks).
        seed: sampling seed (part of the resumable state).
        dropout: modality / conditioning dropout probabilities.
        val_batches: number of validation batches.
        num_workers: DataLoader worker processes.
        verify: shard checksum verification at setup ("full", "size", "none").
        epoch_batches: global batches per nominal epoch (0 = tokens / (T * batch)).
    """

    def __init__(
        self,
        sources: list[SourceSpec],
        val_sources: list[SourceSpec] | None = None,
        seq_len: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        dropout: DropoutConfig | None = None,
        val_batches: int = 4,
        num_workers: int = 0,
        verify: str = "full",
        epoch_batches: int = 0,
    ) -> None:
        super().__init__()
        self.sources = [s if isinstance(s, SourceSpec) else SourceSpec(**s) for s in sources]
        self.val_sources = [
            s if isinstance(s, SourceSpec) else SourceSpec(**s) for s in (val_sources or [])
        ]
        if not self.sources:
            raise ValueError("data: at least one training source is required")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.dropout = dropout or DropoutConfig()
        self.val_batches, self.num_workers, self.verify = val_batches, num_workers, verify
        self.epoch_batches = epoch_batches
        self.batches_consumed = 0
        self._train: ShardSet | None = None
        sets = [ShardSet(s.path, verify="none") for s in self.sources + self.val_sources]
        # one tokenizer set; a source may lack specials added later (e.g. pretraining
        # shards replayed in a chat stage): the run reads the widest vocabulary
        wide = max(sets, key=lambda s: s.vocab.size)
        self.vocab_manifest = wide.manifest["vocab"]
        for s in sets:
            same = s.manifest["vocab"].get("fingerprints") == self.vocab_manifest.get(
                "fingerprints"
            )
            if not (same and s.vocab.grows_into(wide.vocab)):
                raise ShardError(
                    f"{s.path}: built with a different tokenizer set "
                    f"({manifest_digest(s.manifest['vocab'])}) than {wide.path} "
                    f"({manifest_digest(self.vocab_manifest)})"
                )
        self.vocab = wide.vocab
        # the media layouts the model learns; a kind a source holds none of does not
        # constrain it (text-only shards leave audio open)
        try:
            self.layout = Layout.merge(
                {str(s.path): Layout.from_manifest(s.manifest, str(s.path)) for s in sets}
            ).to_dict()
        except LayoutError as e:
            raise ShardError(str(e)) from None

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._world()
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} not divisible by {world} ranks")
        train = [ShardSet(s.path, verify=self.verify) for s in self.sources]
        audio = AudioCodes.of(self.vocab, Layout.from_dict(self.layout))
        self.train_set = PackedDataset(
            train, [s.weight for s in self.sources], self.seq_len, self.seed, self.dropout, audio
        )
        self.val_set = None
        if self.val_sources:
            val = [ShardSet(s.path, verify=self.verify) for s in self.val_sources]
            self.val_set = PackedDataset(
                val, [s.weight for s in self.val_sources], self.seq_len, self.seed + 1
            )

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        return ShardLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        epoch = self.epoch_batches or max(1, len(self.train_set) // self.batch_size)
        sampler = ResumableBatchSampler(
            self.batch_size // world, rank, world, epoch, start_batch=self.batches_consumed
        )
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []
        rank, world = self._world()
        sampler = ResumableBatchSampler(self.batch_size // world, rank, world, self.val_batches)
        return self._loader(self.val_set, sampler)

    # ---- resumable state (saved in every checkpoint by Lightning) ----------------------
    def state_dict(self) -> dict:
        t = self.trainer
        consumed = self.batches_consumed
        if t is not None:
            consumed = t.global_step * t.accumulate_grad_batches
        return {"batches_consumed": consumed, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("batch_size") != self.batch_size:
            raise ValueError(
                f"resume: the checkpoint's data seed/batch_size ({state.get('seed')}, "
                f"{state.get('batch_size')}) differ from the config ({self.seed}, "
                f"{self.batch_size}); the data order would not match"
            )
        self.batches_consumed = int(state["batches_consumed"])


def source_paths(specs: list[SourceSpec]) -> list[Path]:
    return [Path(s.path) for s in specs]
