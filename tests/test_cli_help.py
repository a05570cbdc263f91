"""Every flag of the four tools has help text, and each tool's usage line names its console script."""

import argparse

import pytest

from meanfield.compare import cli as compare
from meanfield import simulate
from meanfield.dump import __main__ as dump_main
from meanfield.fit import cli as fit_cli


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("tool", [simulate, fit_cli, compare, dump_main], ids=lambda m: m.PROG)
def test_every_flag_has_help(tool):
    parser = tool.build_parser()
    assert parser.format_usage().startswith(f"usage: {tool.PROG} ")
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in _parsers(parser) for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert not missing, missing


@pytest.mark.parametrize("tool", [simulate, fit_cli, compare, dump_main], ids=lambda m: m.PROG)
def test_defaults_shown_one_way_in_plain_text(tool):
    """Every option with a default says it as ' (default: X)'; no reST markup, no '[X]' defaults."""
    problems = []
    for p in _parsers(tool.build_parser()):
        text = p.format_help()
        for bad in ("``", "[default", "**"):
            if bad in text:
                problems.append(f"{p.prog}: {bad!r} in the help")
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or not a.option_strings:
                continue
            shown = p._get_formatter()._get_help_string(a)
            if a.default not in (None, False) and "(default:" not in shown:
                problems.append(f"{p.prog} {a.option_strings[0]}: default {a.default!r} not shown")
            if "[" in (a.help or "") and "]" in (a.help or "") and a.help.rstrip().endswith("]"):
                problems.append(f"{p.prog} {a.option_strings[0]}: a '[X]' default")
    assert not problems, problems
