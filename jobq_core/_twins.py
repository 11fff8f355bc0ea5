"""Docstrings written once: on the sync classes, which the async twins mirror."""

from __future__ import annotations

import inspect


def share_docstrings(twin: type, original: type) -> None:
    """Give each method of `twin` without a docstring the docstring of `original`'s method of
    the same name, so `help()` shows it on both."""
    for name, member in vars(twin).items():
        if not callable(member) or inspect.getdoc(member):
            continue
        source = getattr(original, name, None)
        doc = None if source is None else inspect.getdoc(source)
        if doc:
            member.__doc__ = doc
