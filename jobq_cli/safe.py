"""Showing untrusted text safely: payloads, errors, request ids and type names are data.

Control characters (ANSI escapes included) are made visible instead of reaching the
terminal; passwords are redacted from anything printed (`jobq_core.dsn.redact`)."""

from __future__ import annotations

import unicodedata

from jobq_core.dsn import redact

__all__ = ["redact", "visible"]


def visible(text: object, limit: int | None = None) -> str:
    """The text with every control or format character shown as an escape (\\x1b, \\n …),
    optionally cut to `limit` characters (counted after escaping) with an ellipsis."""
    value = str(text)
    if limit is not None:
        value = value[: limit * 2]  # enough to fill `limit` even before escaping
    shown = "".join(
        ch if unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape")
        .decode("ascii")
        for ch in value
    )
    if limit is not None and (len(shown) > limit or len(value) < len(str(text))):
        shown = shown[: max(limit - 1, 0)] + "…"
    return shown
