"""README examples run, and .ci/run installs and tests exactly as the README says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run():
    examples = blocks("python")
    assert examples
    for code in examples:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup, tests = blocks("bash")[:2]
    ci_setup = ci.split("# --- README: set up")[1].split("# --- end set up")[0]
    ci_tests = ci.split("# --- README: tests")[1].split("# --- end tests")[0]
    # the README chains the set-up steps with && ; CI runs the same steps one per line
    for step in setup.strip().split(" && "):
        assert step.strip() in ci_setup, step
    assert tests.strip() in ci_tests
