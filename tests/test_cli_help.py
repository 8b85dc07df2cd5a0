"""Every verb explains itself (issue 25): each option of each verb's parser has a help
line, and the help shows the defaults. ``fit`` is LightningCLI's (its own --help)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from native_mm.cli import all_verbs


def _parser(target: str) -> argparse.ArgumentParser | None:
    """The ArgumentParser a verb builds (caught at parse_args, before it runs)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        seen.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        module, func = target.split(":")
        with pytest.raises(SystemExit):
            getattr(importlib.import_module(module), func)([], prog="native-mm x")
    finally:
        argparse.ArgumentParser.parse_args = original
    return seen[0] if seen else None


VERBS = {" ".join(w): t for w, (t, _) in all_verbs().items() if w != ("fit",)}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_has_a_help_line_and_its_default(verb: str) -> None:
    p = _parser(VERBS[verb])
    assert p is not None, verb
    text = p.format_help()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and "EvalConfig." not in action.help, (verb, name)
        unset = action.default is None or action.default is False
        has_default = not unset and action.default != argparse.SUPPRESS
        if action.option_strings and not action.required and has_default:
            assert "default" in p._get_formatter()._get_help_string(action), (verb, name)
    assert "usage:" in text


def test_field_help_reads_the_dataclass_comments() -> None:
    from native_mm.apps.digits.recipe import EvalConfig
    from native_mm.cli_help import field_help

    helps = field_help(EvalConfig)
    assert helps["image_size"] == "prompt images' side, pixels (the corpus' image_size)"
    assert set(helps) == {f for f in EvalConfig.__dataclass_fields__}
