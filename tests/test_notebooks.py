"""The ablation notebooks run top to bottom in SMOKE mode, and the hooks they use work.

Every ``notebooks/*.ipynb`` is executed with nbclient, with ``NMM_SMOKE=1`` (read by each
notebook's parameters cell: tiny model, a few steps) and ``NMM_WORK`` pointing at one
session directory, so the smoke data build (``experiments.prepare_digits``) is made once
and shared by all notebooks. A cell that raises fails the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from native_mm.apps.digits import experiments as ex

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


# ---- the hooks ---------------------------------------------------------------------------
def test_read_metrics_and_series(tmp_path: Path) -> None:
    csv = tmp_path / "csv" / "metrics.csv"
    csv.parent.mkdir()
    csv.write_text("epoch,step,train/loss,val/loss_text\n0,1,2.5,\n0,0,3.0,\n0,1,,4.0\n")
    rows = ex.read_metrics(tmp_path)
    assert rows[2] == {"epoch": 0.0, "step": 1.0, "val/loss_text": 4.0}  # empty cells dropped
    steps, vals = ex.series(rows, "train/loss")
    assert list(steps) == [0, 1] and list(vals) == [3.0, 2.5]  # in step order
    assert ex.series(rows, "missing")[0].size == 0
    with pytest.raises(FileNotFoundError, match="no metrics CSV"):
        ex.read_metrics(tmp_path / "nothing")


def test_count_spikes() -> None:
    flat = [5.0] * 30
    assert ex.count_spikes(flat) == 0
    one = flat[:15] + [8.0, 8.5] + flat[:13]  # two high points in a row: one spike
    assert ex.count_spikes(one) == 1
    two = flat[:12] + [9.0] + flat[:10] + [float("nan")] + flat[:6]
    assert ex.count_spikes(two) == 2  # a non-finite loss is a spike too
    decreasing = list(np.linspace(7, 3, 50))
    assert ex.count_spikes(decreasing) == 0


def test_lm_config_merges_recipe_overrides_and_data(tmp_path: Path) -> None:
    cfg = ex.lm_config(["a/shards", {"path": "b", "weight": 0.3}], tmp_path / "run",
                       {"model": {"arch": {"qk_norm": False}, "lr": 0.1}}, seed=3,
                       val_sources=["held"])  # fmt: skip
    assert cfg["model"]["arch"]["qk_norm"] is False and cfg["model"]["lr"] == 0.1
    assert cfg["model"]["arch"]["n_layer"] == 4  # the rest of the recipe stays
    assert cfg["data"]["sources"] == [{"path": "a/shards", "weight": 1.0},
                                      {"path": "b", "weight": 0.3}]  # fmt: skip
    assert cfg["data"]["val_sources"] == [{"path": "held", "weight": 1.0}]
    assert cfg["seed_everything"] == 3 and cfg["data"]["seed"] == 3
    assert cfg["run"]["out_dir"] == str(tmp_path / "run") and cfg["run"]["logger"] == "csv"
    assert ex.lm_config(["a"], tmp_path)["data"]["val_sources"] is None


def test_text_documents_are_deterministic_and_text_only(tmp_path: Path) -> None:
    a = ex.write_text_documents(tmp_path / "a.jsonl", 20, seed=1).read_text()
    assert a == ex.write_text_documents(tmp_path / "b.jsonl", 20, seed=1).read_text()
    assert a != ex.write_text_documents(tmp_path / "c.jsonl", 20, seed=2).read_text()
    docs = [json.loads(line) for line in a.splitlines()]
    assert len(docs) == 20 and all(list(d["segments"][0]) == ["text"] for d in docs)
    from native_mm.documents import read_documents

    assert len(list(read_documents(tmp_path / "a.jsonl"))) == 20


def test_speech_subset_keeps_the_first_voices(tmp_path: Path) -> None:
    from native_mm.apps.digits import speech

    clips = speech.read_manifest(ex.speech_subset(tmp_path, 2, 1))
    voices = {sp: {c.voice for c in clips if c.split == sp} for sp in ("train", "heldout")}
    assert len(voices["train"]) == 2 and len(voices["heldout"]) == 1
    assert all(c.path.is_file() for c in clips) and len(clips) == 30  # 10 digits per voice


def test_conflict_items_disagree_and_follow_rates() -> None:
    items = ex.conflict_items(30, seed=0)
    assert all(it.digit != it.text_digit for it in items)
    assert [k for k, _ in items[0].prompt] == ["text", "image"]
    pred = [it.digit for it in items[:10]] + [it.text_digit for it in items[10:25]] + [-1] * 5
    rates = ex.follow_rates(pred, items)
    assert rates == pytest.approx({"follows_image": 10 / 30, "follows_text": 15 / 30,
                                   "neither": 5 / 30})  # fmt: skip


def test_text_dropout_drops_text_runs_of_multimodal_documents() -> None:
    from native_mm.training.data import DropoutConfig, transform_document
    from native_mm.vocab import BOI, BOS, EOI, EOS

    rng = np.random.default_rng(0)
    ids = np.array([BOS, 20, 21, BOI, 200, 201, EOI, 22, EOS], np.int64)
    loss = np.ones(len(ids), bool)
    out, ol = transform_document(ids, loss, DropoutConfig(text_dropout=1.0), rng)
    assert list(out) == [BOS, BOI, 200, 201, EOI, EOS] and len(ol) == len(out)
    text_only = np.array([BOS, 20, 21, EOS], np.int64)  # no media span: left alone
    assert transform_document(text_only, loss[:4], DropoutConfig(text_dropout=1.0), rng)[0] is (
        text_only
    )
    kept = [21 in transform_document(ids, loss, DropoutConfig(text_dropout=0.3), rng)[0]
            for _ in range(2000)]  # fmt: skip
    assert abs(1 - np.mean(kept) - 0.3) < 0.04
    # text_dropout 0 draws nothing: the image dropout's stream is what it was without it
    a = [transform_document(ids, loss, DropoutConfig(image_dropout=0.5),
                            np.random.default_rng(s))[0].tolist() for s in range(20)]  # fmt: skip
    b = [transform_document(ids, loss, DropoutConfig(image_dropout=0.5, text_dropout=0.0),
                            np.random.default_rng(s))[0].tolist() for s in range(20)]  # fmt: skip
    assert a == b


# ---- the notebooks -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smoke_kernel(tmp_path_factory: pytest.TempPathFactory):
    """One kernel for every notebook (torch and Lightning are imported once, which is most
    of a smoke run's time), started with ``NMM_SMOKE=1`` and ``NMM_WORK`` set to one
    session directory: the first notebook's ``prepare_digits`` builds the smoke corpus,
    tokenizer set and shards there, and the others reuse them."""
    pytest.importorskip("nbclient")
    from jupyter_client.manager import KernelManager

    work = tmp_path_factory.mktemp("notebooks")
    env = {**os.environ, "NMM_SMOKE": "1", "NMM_WORK": str(work), "OMP_NUM_THREADS": "1"}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(REPO), env=env)
    yield km
    km.shutdown_kernel(now=True)


def test_every_notebook_is_tested() -> None:
    assert len(NOTEBOOKS) >= 3, "notebooks/ lost its notebooks"
    for nb in NOTEBOOKS:
        text = nb.read_text()
        assert "NMM_SMOKE" in text, f"{nb.name}: its parameters cell must read NMM_SMOKE"
        assert '"parameters"' in text, f"{nb.name}: no cell tagged 'parameters'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path: Path, smoke_kernel) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    # a clean namespace for each notebook: only the imported modules are shared
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f\nimport matplotlib.pyplot\n"
                                                 "matplotlib.pyplot.close('all')"))  # fmt: skip
    client = nbclient.NotebookClient(nb, km=smoke_kernel, timeout=300)
    client.execute()  # raises CellExecutionError naming the cell that failed
