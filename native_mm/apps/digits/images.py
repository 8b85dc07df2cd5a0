"""scikit-learn's handwritten digits (``load_digits``) with a FIXED train/held-out split.

The 1,797 images are 8x8 with 17 gray levels (0 = background, 16 = ink). The split is by
sample index and never changes: the first 80% (indices ``[0, 1437)``) are ``train``, the
last 20% (``[1437, 1797)``) are ``heldout``. Images are shown as white ink on black.

:class:`DigitJudge` is a small classifier trained on the ORIGINAL 8x8 train images; it
judges reconstructions made by a tokenizer (downsampled back to 8x8 first), independently
of the tokenizer itself.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

N_DIGITS = 1797
SPLIT_INDEX = 1437  # floor(0.8 * 1797): train = [0, 1437), heldout = [1437, 1797)
SPLITS = ("train", "heldout", "all")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Digit images and labels of a split.

    Returns:
        images ``(N, 8, 8)`` float32 in [0, 16] and labels ``(N,)`` int64.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; have {SPLITS}")
    images, labels = _load()
    sl = {"train": slice(0, SPLIT_INDEX), "heldout": slice(SPLIT_INDEX, None)}.get(
        split, slice(None)
    )
    return images[sl].copy(), labels[sl].copy()


def to_pil(image: np.ndarray, size: int = 32, resample: str = "bicubic") -> Image.Image:
    """One ``(8, 8)`` digit in [0, 16] -> an ``L`` PIL image of ``size x size``."""
    arr = np.clip(np.asarray(image, np.float32) * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    img = Image.fromarray(arr, mode="L")
    return img if size == 8 else img.resize((size, size), RESAMPLE[resample])


def images(split: str = "train", size: int = 32, resample: str = "bicubic") -> list[Image.Image]:
    """All digits of a split as upscaled ``L`` PIL images."""
    return [to_pil(x, size, resample) for x in load(split)[0]]


def to_8x8(image: Image.Image) -> np.ndarray:
    """A (reconstructed) digit image of any size -> ``(8, 8)`` float32 in [0, 16].

    Converts to gray and area-averages (box filter) down to 8x8, undoing :func:`to_pil`.
    """
    small = image.convert("L").resize((8, 8), Image.Resampling.BOX)
    return np.asarray(small, np.float32) * (16.0 / 255.0)


class DigitJudge:
    """RBF-SVM digit classifier trained on the original 8x8 train split (~96% held-out)."""

    def __init__(self) -> None:
        from sklearn.svm import SVC

        x, y = load("train")
        self.clf = SVC(C=3.0, gamma="scale")  # deterministic: no random state involved
        self.clf.fit(x.reshape(len(x), -1) / 16.0, y)

    def predict(self, images_8x8: np.ndarray) -> np.ndarray:
        """``(N, 8, 8)`` in [0, 16] -> predicted labels ``(N,)``."""
        x = np.asarray(images_8x8, np.float32)
        return self.clf.predict(x.reshape(len(x), -1) / 16.0)

    def accuracy(self, images_8x8: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(images_8x8) == np.asarray(labels)).mean())
