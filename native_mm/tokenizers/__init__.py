"""Per-modality tokenizers behind one interface (see ``base.Tokenizer``)."""

from native_mm.tokenizers.base import MediaError, Tokenizer, TokenizerSet, Waveform

__all__ = ["MediaError", "Tokenizer", "TokenizerSet", "Waveform"]
