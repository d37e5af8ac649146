"""Every command's --help is plain text (no Sphinx/Markdown markup) and states a default for
every option that takes a value (or says it is required)."""

from __future__ import annotations

import argparse
import re

import pytest

from faceaux.cli import build_parser

MARKUP = re.compile(r"``|:(class|func|meth|mod|data|attr|obj):`|\*\*")


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"faceaux": parser, **sub.choices}


def problems(parser: argparse.ArgumentParser) -> list[str]:
    found = []
    texts = [parser.description or "", parser.epilog or ""]
    for action in parser._actions:
        texts.append(action.help or "")
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.nargs == 0:  # flags: their help says what they turn on
            continue
        if not action.required and "default" not in (action.help or ""):
            found.append(f"{'/'.join(action.option_strings)} states no default")
    found += [f"markup {m.group(0)!r}" for text in texts for m in MARKUP.finditer(text)]
    return found


@pytest.mark.parametrize("name", list(commands()))
def test_help_is_plain_text_with_defaults(name: str, capsys) -> None:
    parser = commands()[name]
    assert problems(parser) == []
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_every_command_is_listed() -> None:
    assert {"demo", "study", "bench", "train", "pack", "eval", "export", "convert-fan"} <= set(
        commands()
    )
