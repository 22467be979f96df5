"""What the ``tasd`` and ``tvmc`` commands share: the parser, error handling, old tvmc's shape syntax.

:func:`run_command` runs a subcommand so that a mistake the user can fix
(``ValueError``, ``OSError``) prints one line on stderr and exits 2,
anything else is an internal error (exit 1); ``--verbose`` shows the
traceback. Warnings print as one ``prog: warning:`` line.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
import warnings
from collections.abc import Callable

from .. import __version__
from ..report import printable
from ..threads import default_tvm_threads

_SHAPE_ENTRY = re.compile(r"\s*(?P<name>[^\s\[\]]+?)\s*:\s*\[(?P<dims>[^\]]*)\]\s*,?")


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes as one line on stderr, like every other mistake of the commands."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def new_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Callable]:
    """A parser with ``-v/--verbose`` (accepted before or after the subcommand) and ``--version``,
    and ``add(name, summary, func, epilog=None)`` to declare a subcommand."""
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand that does not see the flag must not reset the top-level one.
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=prog, description=description, parents=[common], formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s (tvm_tasd {__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str, func: Callable, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary, epilog=epilog, parents=[common],
                           formatter_class=formatter)
        p.set_defaults(func=func)
        return p

    return parser, add


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class _Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, and are remembered: TVM turns an exception raised inside
    one of its callbacks into a RuntimeError, which must still count as the interrupt it was."""

    seen = False

    @classmethod
    def handle(cls, signum, frame):
        cls.seen = True
        raise KeyboardInterrupt


def run_command(prog: str, parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; the exit code."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)  # absent unless given: the flag's default is SUPPRESS
    default_tvm_threads()  # before TVM's thread pool starts: a compiled model runs on every core
    for signum in (signal.SIGINT, signal.SIGTERM):  # `kill` cleans up like Ctrl-C: partial outputs and temp files go
        signal.signal(signum, _Interrupts.handle)
    try:
        with warnings.catch_warnings():
            for noise in (DeprecationWarning, FutureWarning):  # library internals, not the user's business
                warnings.simplefilter("ignore", noise)
            warnings.showwarning = lambda message, *_: print(f"{prog}: warning: {printable(str(message))}",
                                                             file=sys.stderr)
            args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if _Interrupts.seen:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        if verbose:
            raise
        if isinstance(err, (ValueError, OSError)):
            print(f"{prog}: error: {printable(_describe(err))}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(err).__name__}: {printable(_describe(err))} (--verbose shows the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


def parse_input_shapes(text: str) -> dict[str, list[int]]:
    """Old tvmc's ``--input-shapes`` syntax: ``"name:[1,3,224,224] other:[1,5]"``."""
    shapes, position, text = {}, 0, text.strip()
    while position < len(text):
        match = _SHAPE_ENTRY.match(text, position)
        if match is None:
            raise ValueError(f"cannot read --input-shapes {text!r}: write name:[d1,d2,…], several separated by "
                             'spaces, e.g. "input:[1,64] mask:[1,64]"')
        dims = [d.strip() for d in match["dims"].split(",") if d.strip()]
        if not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"input {match['name']!r}: shape [{match['dims']}] must list positive integers "
                             "(a dynamic dimension needs a fixed size here)")
        if match["name"] in shapes:
            raise ValueError(f"--input-shapes names input {match['name']!r} twice")
        shapes[match["name"]] = [int(d) for d in dims]
        position = match.end()
    return shapes


def show_command(argv: list) -> None:
    """Print the command line a step corresponds to."""
    print("  $ " + shlex.join(str(a) for a in argv), flush=True)
