"""`jobq`: the command line for scripts and operators.

Exit codes: 0 success, 1 failure, 2 usage or bad input, 3 not found, 4 lease lost or conflict,
5 database unreachable, 130 interrupted. Errors are one line on stderr; data goes to stdout.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Any, NoReturn

import typer

import jobq_core
from jobq_core import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    JobStateError,
    LeaseLostError,
    NotFoundError,
    TaskRunner,
)

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNREACHABLE = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 failure, 2 usage or bad input, 3 not found, "
    "4 lease lost or conflict, 5 database unreachable, 130 interrupted."
)

app = typer.Typer(
    name="jobq",
    help=f"Operate a jobq queue on Postgres. {EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    typer.echo(f"jobq: {message}".replace("\n", " "), err=True)
    raise typer.Exit(code)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, LeaseLostError | JobStateError):
        return EXIT_CONFLICT
    if isinstance(exc, DatabaseUnavailableError):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE


def load_runner(target: str) -> TaskRunner:
    """`module:attribute`, where the attribute is a TaskRunner or a function returning one."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InvalidInputError(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"cannot import {module_name!r}: {exc}") from None
    try:
        found: Any = getattr(module, attribute)
    except AttributeError:
        raise InvalidInputError(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, TaskRunner):
        found = found()
    if not isinstance(found, TaskRunner):
        raise InvalidInputError(f"{target} is not a TaskRunner (got {type(found).__name__})")
    return found


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="module:attribute of a TaskRunner (or factory)")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="override the runner's")] = None,
) -> None:
    """Run a task runner until SIGTERM or SIGINT.

    Running jobs may finish within the runner's shutdown timeout; the rest are handed back
    to the queue at no attempt cost. A second signal stops at once.
    """
    try:
        runner = load_runner(target)
        if concurrency is not None:
            runner.concurrency = concurrency
        typer.echo(f"jobq: serving {', '.join(runner.task_types) or 'nothing'} with "
                   f"concurrency {runner.concurrency} as {runner.worker_name}", err=True)
        runner.serve_forever()
    except JobqError as exc:
        fail(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def version() -> None:
    """Print jobq's version."""
    typer.echo(jobq_core.__version__)


def main() -> None:
    app()
