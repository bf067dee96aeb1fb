"""`trainyard --help` is usable on its own: a description, examples, and help text on every command,
argument and option (the installed console script, run as a user runs it)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.utils.server import REPO


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _parsers(sub)
    return out


def test_help_describes_the_command_and_shows_examples() -> None:
    run = subprocess.run([sys.executable, "-m", "common.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "self-hosted LLM fine-tuning" in run.stdout and "examples:" in run.stdout
    for command in ("serve", "keys", "secrets"):
        assert f"trainyard {command} " in run.stdout


def test_every_command_argument_and_option_has_help() -> None:
    from common.cli import build_parser

    missing = []
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{prog} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == [], f"without help text: {missing}"
