"""Errors before a command runs, as one line: `jobq` and `jobq-tui` print a usage error (a bad
value, an unknown option or command, a missing argument) the way they print every other
error, on one stderr line with exit code 2, instead of Click's usage block."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup

from .safe import redact, visible

#: Exit code of a prompt that met the end of its input (the CLI's EXIT_FAILURE).
ABORTED = 1

#: The --read-dsn help, the same for jobq and jobq-tui.
READ_DSN_HELP = (
    "a hot standby (streaming replica) of the database, for reads; actions, their previews "
    "and trace following use the primary (--dsn). The replica's lag is shown; '' reads "
    "the primary")


def error_line(message: str, dsn: str | None = None, prog: str = "jobq") -> str:
    """`message` as the one line an error prints: control characters escaped, no password."""
    return f"{prog}: " + redact(visible(" ".join(message.split())), dsn)


def _refused_value(exc: BaseException) -> object:
    """The value a parameter's type refused, or None: Typer checks values with pydantic and
    chains its ValidationError, which keeps the input."""
    from pydantic import ValidationError

    cause = exc.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        return cause.errors()[0].get("input")
    return None


def usage_line(exc: typer.TyperException, prog: str = "jobq") -> str:
    """A usage error as one line, e.g. "invalid value for 'job_id': ..., got 'abc' (see
    jobq show --help)"."""
    message = exc.format_message().strip().removesuffix(".")
    if message[1:2].islower():
        message = message[0].lower() + message[1:]
    value = _refused_value(exc)
    if value is not None:
        message += f", got {value!r}"
    ctx = getattr(exc, "ctx", None)  # a UsageError's command, for the help hint
    if ctx is not None:
        message += f" (see {ctx.command_path} --help)"
    return error_line(message, prog=prog)


class _OneLine:
    """Runs Click outside standalone mode, so that its errors come here to be printed as one
    line; an exit's code (typer.Exit, --help) is returned and kept."""

    prog: ClassVar[str]

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        run = super().main  # type: ignore[misc]
        if not standalone_mode:
            return run(args, prog_name, complete_var, standalone_mode, windows_expand_args,
                       **extra)
        try:
            code = run(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # Click's usage and parameter errors
            typer.echo(usage_line(exc, self.prog), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:  # end of input at a prompt
            typer.echo(error_line("aborted", prog=self.prog), err=True)
            sys.exit(ABORTED)
        sys.exit(code if isinstance(code, int) else 0)


class OneLineGroup(_OneLine, TyperGroup):
    """`jobq`'s command group."""

    prog = "jobq"


class OneLineCommand(_OneLine, TyperCommand):
    """`jobq-tui`, a single command."""

    prog = "jobq-tui"
