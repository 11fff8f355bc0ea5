"""Showing untrusted text safely: payloads, errors, request ids and type names are data.

Control characters (ANSI escapes included) are made visible instead of reaching the
terminal, and passwords are redacted from anything printed."""

from __future__ import annotations

import re
import unicodedata

_URL_PASSWORD = re.compile(r"(?P<scheme>\w+://[^:/@\s]*):[^@\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


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


def redact(message: str, dsn: str | None = None) -> str:
    """`message` without the password of `dsn` or of any URL or key=value conninfo in it."""
    if dsn:
        try:
            from psycopg.conninfo import conninfo_to_dict

            password = conninfo_to_dict(dsn).get("password")
        except Exception:
            password = None
        if password:
            message = message.replace(str(password), "***")
    message = _URL_PASSWORD.sub(r"\g<scheme>:***@", message)
    return _KV_PASSWORD.sub(r"\1***", message)
