"""native-mm: a native early-fusion multimodal transformer (text, images and audio).

``from native_mm.pretrained import from_pretrained`` loads a model directory
(``native-mm export``) for generation.
"""

__version__ = "0.1.0"
