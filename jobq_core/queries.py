"""The queue's statements, read once from `queries.sql`: a `-- name --` line opens each, the
comment lines after it describe it, and the rest, up to the next name, is the statement as it
runs (its placeholders filled by `sql.Statements`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
_COMMENT_LINE = re.compile(r"^\s*--")


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    text: str


def _sent(lines: list[str]) -> str:
    """A statement as it is sent: its comment lines are for the reader, and would travel with
    every call (a claim's doubled its size) and fill pg_stat_activity, so they go; but in a
    dollar-quoted function body, where they stay with the function for whoever reads it in
    the database."""
    if any("$" in line for line in lines):
        return "\n".join(lines)
    return "\n".join(line for line in lines if not _COMMENT_LINE.match(line))


def parse(source: str) -> dict[str, Query]:
    """The named statements of `source`; the text before the first name is its preamble."""
    pieces = _NAME.split(source)
    queries: dict[str, Query] = {}
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        lines = body.strip("\n").splitlines()
        described = 0
        while described < len(lines) and lines[described].startswith("--"):
            described += 1
        if name in queries:
            raise ValueError(f"queries.sql names {name!r} twice")
        end = len(lines)
        while end > described and (not lines[end - 1].strip() or lines[end - 1].startswith("--")):
            end -= 1  # a section head before the next name belongs to no statement
        description = "\n".join(line[2:].strip() for line in lines[:described]).strip()
        queries[name] = Query(name, description, _sent(lines[described:end]))
    return queries


QUERIES = parse(resources.files(__package__).joinpath("queries.sql").read_text("utf-8"))
