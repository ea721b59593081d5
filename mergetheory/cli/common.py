"""What every subcommand shares: the error type, the one-line-error parser, the table entry."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple, NoReturn

__all__ = [
    "INPUT_FORMATS",
    "PROG",
    "CliError",
    "Parser",
    "Subcommand",
    "add_format_argument",
    "one_line",
]

PROG = "mergetheory"

INPUT_FORMATS = ("npz", "npy", "safetensors", "hf", "peft", "orbax", "msgpack")
"""``--format`` values: :data:`mergetheory.io.pool.EXPERT_FORMATS` (kept JAX-free here)."""


def add_format_argument(p: argparse.ArgumentParser) -> None:
    """``--format``: force the input format of every input and the base."""
    p.add_argument(
        "--format",
        choices=INPUT_FORMATS,
        metavar="FORMAT",
        help="force the format of every input and the base instead of detecting it: "
        + ", ".join(INPUT_FORMATS),
    )


class CliError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class Subcommand(NamedTuple):
    """An entry of :data:`SUBCOMMANDS`.

    Attributes:
      help: one line for ``mergetheory --help``.
      add_arguments: ``fn(parser)`` adds the subcommand's arguments.
      run: ``fn(args) -> exit status``; raises :class:`CliError` on bad input.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def one_line(msg: str) -> str:
    """``msg`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(msg).split())
