"""Every flag of the four tools has help text, and each tool's usage line names its console script."""

import argparse

import pytest

from meanfield import compare, simulate
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
