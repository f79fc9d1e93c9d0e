"""The ``bdia`` command line: one entry point (:func:`main`), one module per subcommand in this folder.

A command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed arguments and returning an exit code. Modules import their heavy
dependencies (diffusers, matplotlib...) inside that function, so ``bdia --help`` stays fast. What
the image commands share (argument types and groups, checks, output helpers) is :mod:`.common`;
the many-inputs form of invert/reconstruct/edit is :mod:`.datasets`.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from .common import CommandError

__all__ = ["COMMAND_MODULES", "CommandError", "build_parser", "main"]

# Command modules, in the order `bdia --help` lists them.
COMMAND_MODULES: list[str] = [
    "bdia.cli.demo",
    "bdia.cli.invert",
    "bdia.cli.reconstruct",
    "bdia.cli.edit",
    "bdia.cli.generate",
    "bdia.cli.app",
    "bdia.cli.bench",
    "bdia.cli.eval",
]


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other bad input (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="bdia", description="Exact diffusion inversion (BDIA) and its baselines.")
    parser.add_argument("--version", action="version", version=f"bdia {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError) as e:  # OSError: files, folders, Pillow's decoders
        return _fail(args.command, e)
    except Exception as e:
        if type(e).__module__.split(".")[0] == "PIL":  # e.g. DecompressionBombError, not an OSError
            return _fail(args.command, e)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# The library's messages name both spellings of an option, "pass overwrite=True (--overwrite)"; on the
# command line only the flag means anything.
_KEYWORD_AND_FLAG = re.compile(r"\b\w+=True \((--[\w-]+)\)")


def _fail(command: str, error: BaseException) -> int:
    """Bad input: one line, exit code 2 (the commands check what they can before any work)."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = _KEYWORD_AND_FLAG.sub(r"\1", text)
    print(f"bdia {command}: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
