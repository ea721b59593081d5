r"""The ``mergetheory`` command: one module a subcommand.

Each subcommand module (:mod:`.width`, :mod:`.merge`, :mod:`.analyze`, :mod:`.run`) defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit status``, registered in
:data:`SUBCOMMANDS`; adding a subcommand is one module and one table line. Parsing imports
no JAX: ``mergetheory --help``, ``--version`` and ``mergetheory SUB --help`` answer at
once, and each ``run`` imports the library when it runs.

Errors in the input (missing or unreadable file, wrong rank, NaN / Inf, ``--num-samples
< 2``, unknown set, ...) end the command with status 2 and ONE line on stderr,
``mergetheory <command>: error: <what is wrong>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import analyze, merge, run, width
from .common import PROG, CliError, Parser, Subcommand, one_line

__all__ = ["SUBCOMMANDS", "CliError", "Subcommand", "main"]

SUBCOMMANDS: dict[str, Subcommand] = {
    "analyze": Subcommand(help=analyze.HELP, add_arguments=analyze.add_arguments, run=analyze.run),
    "merge": Subcommand(help=merge.HELP, add_arguments=merge.add_arguments, run=merge.run),
    "width": Subcommand(help=width.HELP, add_arguments=width.add_arguments, run=width.run),
    "run": Subcommand(help=run.HELP, add_arguments=run.add_arguments, run=run.run),
}
"""Subcommands by name; ``main`` builds one sub-parser per entry."""


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="mergetheory: the theory of model merging, in numbers")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, cmd in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mergetheory`` command.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Exit status: 0 on success, 2 on bad input (one line on stderr).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return SUBCOMMANDS[args.command].run(args)
    except CliError as exc:
        sys.stderr.write(f"{PROG} {args.command}: error: {one_line(exc)}\n")
        return 2
