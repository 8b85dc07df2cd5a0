"""The README's "Train on your own data" tutorial, replayed command by command as written
(issue 18): each command runs from a fresh folder holding the committed sample, and leaves
what the next one needs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_block(section: str, language: str = "bash") -> str:
    text = (REPO / "README.md").read_text()
    return re.search(f"```{language}\n(.*?)```", text[text.index(section) :], re.S).group(1)


def tutorial_commands(section: str = "## Train on your own data") -> list[str]:
    block = readme_block(section)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_tutorial_runs_as_written(tmp_path):
    commands, release = tutorial_commands(), tutorial_commands("## Release a model")
    assert [shlex.split(c)[:2] for c in commands] == [
        ["native-mm", "tokenizer"]] * 4 + [["native-mm", "tokenize"], ["native-mm", "fit"]] + [
        ["native-mm", "generate"]] * 2  # fmt: skip
    assert [shlex.split(c)[:2] for c in release] == [["native-mm", "export"],
                                                    ["native-mm", "generate"]]  # fmt: skip
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the commands' relative paths
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in commands + release:
        run = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{cmd}\n{run.stderr[-3000:]}"
    own = tmp_path / "own"
    manifest = json.loads((own / "shards/manifest.json").read_text())
    assert manifest["sources"]["photos"]["documents"] == 24
    assert manifest["sources"]["speech"]["documents"] == 16
    assert json.loads((own / "shards/skipped.json").read_text())["count"] == 0
    assert list((own / "gen").glob("*.png")) and list((own / "gen").glob("*.txt"))
    # "Release a model": the directory alone draws what the checkpoint drew (same seed)
    model = own / "model"
    assert {"model.safetensors", "tokenizers", "README.md", "transformers"} <= {
        p.name for p in model.iterdir()}  # fmt: skip
    drawn = (own / "gen" / "sample0_0.png").read_bytes()
    assert (own / "gen_model" / "sample0_0.png").read_bytes() == drawn
    code = readme_block("## Release a model", "python")
    python = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert python.returncode == 0, python.stderr[-3000:]
    assert (own / "flower.png").read_bytes() == drawn  # the API, seed 0: the same image
    assert python.stdout.strip().startswith("[")  # the outputs list, printed
