"""``tokenize`` as N independent parts + a merge, and on a local Dask cluster (issue 18):
the shards are the bytes one process writes, and a merge before every part is done names
the missing shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from native_mm.training.shards import ShardError, tokenize
from native_mm.training.tokenize_cli import main as tokenize_main
from tests import bad_inputs
from tests.doubles import tokenizer_set, write_corpus
from tests.reliability_common import tiny_tokenizer_set
from tests.test_webdataset_in import _png, _tar, _wav

SAME = ("documents", "tokens", "loss_tokens", "modality_tokens", "sources", "build_key")


def _quiet(_: str) -> None:
    pass


def assert_same_build(a: Path, b: Path) -> None:
    """Every shard file byte-identical; the manifests agree on everything but paths."""
    names = sorted(p.name for p in (a / "shards").iterdir() if p.suffix != ".json")
    assert names == sorted(p.name for p in (b / "shards").iterdir() if p.suffix != ".json")
    assert names and all(
        (a / "shards" / n).read_bytes() == (b / "shards" / n).read_bytes() for n in names
    )
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert {k: ma[k] for k in SAME} == {k: mb[k] for k in SAME}
    assert ma["shards"] == mb["shards"]  # the same files, sizes and sha256s
    ra, rb = (json.loads((d / "skipped.json").read_text())["count"] for d in (a, b))
    assert ra == rb > 0  # the bad records are skipped and reported the same way


def test_three_parts_and_a_merge_equal_one_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=60)
    toks = tokenizer_set()
    one = tmp_path / "one"
    tokenize([corpus], one, toks, docs_per_shard=8, workers=0, log=_quiet)
    split = tmp_path / "split"
    counts = [tokenize([corpus], split, toks, docs_per_shard=8, workers=0, log=_quiet,
                       part=(k, 3)) for k in (2, 0)]  # fmt: skip
    assert [c["shards"] for c in counts] == [[2, 5], [0, 3, 6]]
    assert not (split / "manifest.json").exists()  # a part writes no manifest
    with pytest.raises(
        ShardError, match=r"3 of 8 shards not done by the parts \(00001, 00004, 00007\)"
    ):
        tokenize([corpus], split, toks, docs_per_shard=8, log=_quiet, merge=True)
    tokenize([corpus], split, toks, docs_per_shard=8, workers=0, log=_quiet, part=(1, 3))
    tokenize([corpus], split, toks, docs_per_shard=8, log=_quiet, merge=True)
    assert_same_build(one, split)
    with pytest.raises(ValueError, match="0 <= k < n"):
        tokenize([corpus], split, toks, part=(3, 3), log=_quiet)


def test_cli_parts_and_merge(tmp_path, capsys, text_tokenizer):
    toks = tiny_tokenizer_set(text_tokenizer, tmp_path / "tok")
    corpus = bad_inputs.build(tmp_path / "bad")
    common = [str(corpus), "--tokenizers", str(toks), "--docs-per-shard", "4", "--workers", "0"]
    assert tokenize_main([*common, "--out", str(tmp_path / "one")]) == 0
    for k in range(2):
        assert tokenize_main([*common, "--out", str(tmp_path / "two"), "--part", f"{k}/2"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["part"] == [k, 2]
    assert tokenize_main([*common, "--out", str(tmp_path / "two"), "--merge"]) == 0
    assert_same_build(tmp_path / "one", tmp_path / "two")
    with pytest.raises(SystemExit):
        tokenize_main([*common, "--out", str(tmp_path / "x"), "--part", "2/2"])
    assert "give K/N" in capsys.readouterr().err


def test_dask_two_local_workers_equal_one_run(tmp_path, text_tokenizer):
    pytest.importorskip("distributed")
    from native_mm.training.tokenize_dask import tokenize_on_dask

    toks = tiny_tokenizer_set(text_tokenizer, tmp_path / "tok")
    corpus = bad_inputs.build(tmp_path / "bad")
    members = []
    for k in range(8):
        members += [(f"{k:03d}.png", _png(k)), (f"{k:03d}.txt", f"photo {k}".encode())]
        members += [(f"{k + 50:03d}.wav", _wav(k)), (f"{k + 50:03d}.txt", f"clip {k}".encode())]
    tar = _tar(tmp_path / "pairs.tar", members + [("999.png", _png(9))])  # no caption
    inputs, kw = [corpus, tar], dict(docs_per_shard=3, orders="text,image;audio,text")
    tokenize(inputs, tmp_path / "one", toks, workers=0, log=_quiet, **kw)
    lines = []
    m = tokenize_on_dask(
        inputs, tmp_path / "dask", toks, "local:2", parts=3, log=lines.append, **kw
    )
    assert "  pairs.tar: 16 samples, 1 skipped" in lines  # converted once, by its own task
    assert sum(line.startswith("  part") for line in lines) == 3
    assert m["sources"]["pairs"]["documents"] == 16
    assert_same_build(tmp_path / "one", tmp_path / "dask")


def test_a_yaml_recipe_says_what_the_flags_say(tmp_path, capsys, text_tokenizer):
    """The mapping from records to documents can live in a recipe (orders and columns as
    mappings); it builds what the same flags build, and a misspelt key is named."""
    toks = tiny_tokenizer_set(text_tokenizer, tmp_path / "tok")
    members = []
    for k in range(6):
        members += [(f"{k:03d}.png", _png(k)), (f"{k:03d}.txt", f"photo {k}".encode())]
    tar = _tar(tmp_path / "pairs.tar", members + [("999.png", _png(9))])  # no caption
    flags = [str(tar), "--tokenizers", str(toks), "--workers", "0", "--docs-per-shard", "2",
             "--orders", "text,image=0.7;image,text=0.3"]  # fmt: skip
    assert tokenize_main([*flags, "--out", str(tmp_path / "flags")]) == 0
    recipe = tmp_path / "tokenize.yaml"
    recipe.write_text(
        f"inputs: [{tar}]\ntokenizers: {toks}\nout: {tmp_path / 'recipe'}\nworkers: 0\n"
        'docs_per_shard: 2\norders:\n  "text,image": 0.7\n  "image,text": 0.3\n'
    )
    assert tokenize_main(["--config", str(recipe)]) == 0
    assert_same_build(tmp_path / "flags", tmp_path / "recipe")
    recipe.write_text(f"inputs: [{tar}]\ntokenizer: {toks}\n")
    with pytest.raises(SystemExit):
        tokenize_main(["--config", str(recipe), "--out", str(tmp_path / "x")])
    assert "unknown option(s) ['tokenizer']" in capsys.readouterr().err
