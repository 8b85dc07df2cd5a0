"""One help style for every verb: descriptions as written, each option with its default.

Verb modules build their parser with :func:`parser`; ``native-mm VERB --help`` then shows
``(default: X)`` after every option that has one (issue 25: no verb hid its defaults).
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks; appends the default to an option's help unless
    the help already says it (or the option has none: required, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        off = action.default is None or action.default is False  # 0 is a default to show
        if "default" in text or action.required or off:
            return text
        return super()._get_help_string(action) or text


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for a verb, with :class:`HelpFormatter`."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter)  # fmt: skip


def field_help(cls: type) -> dict[str, str]:
    """Each dataclass field's inline ``# comment`` -> its help line: one text for the
    code's reader and the command line (fields without a comment are left out)."""
    import inspect
    import re

    pattern = re.compile(r"^\s+(\w+)\s*:[^=#]+=[^#]*#\s*(.+)$")
    lines = inspect.getsource(cls).splitlines()
    return {m.group(1): m.group(2).strip() for line in lines if (m := pattern.match(line))}
