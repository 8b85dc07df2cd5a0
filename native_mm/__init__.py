"""native-mm: a native early-fusion multimodal transformer (text, images, audio)."""

__version__ = "0.1.0"
