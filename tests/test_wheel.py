"""Installed, not only cloned: a wheel built from this tree runs the digits smoke job from an
empty directory, finding the recipes, the shipped tokenizers and the committed spoken digits
as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_runs_the_smoke_job_from_an_empty_directory(tmp_path):
    # built from a copy: setuptools' build/ folder in the tree would keep stale modules
    src, dist = tmp_path / "src", tmp_path / "dist"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "__pycache__",
                                  "*.egg-info", "checkpoints", "notebooks")  # fmt: skip
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = dist.glob("native_mm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("native_mm/resources/recipes/digits.yaml",
                    "native_mm/resources/recipes/data/spoken_digits/manifest.csv",
                    "native_mm/resources/tokenizers/image/digits/weights.pt",
                    "native_mm/resources/tokenizers/audio/speech8k/config.json"):  # fmt: skip
        assert shipped in names, shipped
    assert not any("/checkpoints/" in n or n.endswith(".png") for n in names)  # only what runs
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    # the wheel's package shadows this clone's editable install (PYTHONPATH comes first)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import json, sys, native_mm, native_mm.resources as r; from native_mm.cli import "
        "main; print(json.dumps([native_mm.__file__, str(r.root())])); "
        "sys.exit(main(['run', '--config', str(r.path('recipes/digits.yaml')), '--smoke']))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    where, root = json.loads(res.stdout.splitlines()[0])
    assert where.startswith(str(site)) and root.startswith(str(site))
    result = json.loads((empty / "runs/digits_smoke/eval/eval.json").read_text())
    assert len(result["directions"]) == 6
