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


def tutorial_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Train on your own data") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_tutorial_runs_as_written(tmp_path):
    commands = tutorial_commands()
    assert [shlex.split(c)[:2] for c in commands] == [
        ["native-mm", "tokenizer"]] * 4 + [["native-mm", "tokenize"], ["native-mm", "fit"]] + [
        ["native-mm", "generate"]] * 2  # fmt: skip
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the commands' relative paths
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in commands:
        run = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{cmd}\n{run.stderr[-3000:]}"
    own = tmp_path / "own"
    manifest = json.loads((own / "shards/manifest.json").read_text())
    assert manifest["sources"]["photos"]["documents"] == 24
    assert manifest["sources"]["speech"]["documents"] == 16
    assert json.loads((own / "shards/skipped.json").read_text())["count"] == 0
    assert list((own / "gen").glob("*.png")) and list((own / "gen").glob("*.txt"))
