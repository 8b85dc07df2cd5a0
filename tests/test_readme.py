"""README examples run, and .ci/run installs and tests exactly as the README says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run():
    """The self-contained examples; those of the tutorial sections need the tutorial's
    files and run in tests/test_tutorial.py, after its commands."""
    tutorial = README.index("## Train on your own data")
    examples = re.findall(r"```python\n(.*?)```", README[:tutorial], flags=re.S)
    assert len(examples) >= 2
    for code in examples:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_commands():
    """The quick start is two commands; CI runs exactly the test one, and make defines both
    (each setting up .venv from constraints.txt first)."""
    quick = blocks("bash")[0].strip().splitlines()
    assert quick == ["make main", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    ci_tests = ci.split("# --- README: tests")[1].split("# --- end tests")[0]
    assert [line for line in ci_tests.splitlines() if line.startswith("make")] == ["make test"]
    make = (ROOT / "Makefile").read_text()
    for target in ("main: $(STAMP)", "test: $(STAMP)", "$(STAMP): pyproject.toml constraints.txt"):
        assert target in make, target
    assert "-c constraints.txt" in make
