"""Data sources named by ``module:function``: a bad reference or a bad result is an error
that names it, before any training starts."""

from __future__ import annotations

import pytest

from native_mm import sources
from native_mm.sources import LabeledMedia, SourceError


def test_references_resolve_and_bad_ones_are_named():
    assert sources.is_ref("native_mm.apps.digits.sources:digit_images")
    assert not sources.is_ref("data/images") and not sources.is_ref("photos")
    with pytest.raises(SourceError, match="native_mm.apps.digits.sources:no_such: cannot load"):
        sources.resolve("native_mm.apps.digits.sources:no_such")
    with pytest.raises(SourceError, match="nope_module:f: cannot load"):
        sources.resolve("nope_module:f")
    with pytest.raises(SourceError, match="native_mm.sources:SourceError.*LabeledMedia"):
        sources.load("native_mm.sources:SourceError", "train")  # returns an exception object
    with pytest.raises(SourceError, match="2 items but 1 labels"):
        LabeledMedia(["a", "b"], [1])


def test_a_digits_split_loads_with_labels_and_a_judge():
    held = sources.load("native_mm.apps.digits.sources:digit_images", "heldout").head(30)
    assert len(held.items) == len(held.labels) == 30
    assert held.judge(held.items, held.labels) > 0.8  # the judge reads the originals


def test_image_trainer_names_a_misspelled_source(tmp_path, capsys):
    from native_mm.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("data: native_mm.apps.digits.sources:digit_imgs\nresolution: 16\n"
                    "model: {factor: 4, channel_mult: [1, 2, 2], min_size: 16}\n")  # fmt: skip
    rc = main(["tokenizer", "train", "image", "--config", str(spec), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "native_mm.apps.digits.sources:digit_imgs: cannot load" in capsys.readouterr().err
