"""native-mm: a native early-fusion multimodal transformer (text, images and audio).

``from native_mm import from_pretrained`` loads a model directory (``native-mm export``)
for generation; see :mod:`native_mm.pretrained`.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import native_mm` (the CLI, --version) must not import torch
    if name in ("from_pretrained", "MultimodalModel"):
        from native_mm import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'native_mm' has no attribute {name!r}")
