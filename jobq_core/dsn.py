"""Connection strings: checked before first use, and never shown with their password.

libpq quotes what it could not parse (`invalid percent-encoded token: "S3cr3tPw%zz"`), and a
password with an unencoded ``@`` turns its tail into the host name, so a message, a status
bar or ``--json`` output can carry a password even though no code printed the DSN. Every
such text passes `redact`, which knows the pieces a malformed DSN could leak."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict

from .errors import InvalidInputError

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# user:password@, through the last @ of a few: a password may hold an unencoded @ / ? or #.
# Bounded and possessive, so that hostile text of any length is redacted in linear time.
_URL_PASSWORD = re.compile(r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://"
                           r"[^:/@\s]*+):(?:[^\s@]{0,256}+@){1,4}")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]*", re.IGNORECASE)
# password=value, the value quoted, or unquoted and running to the next keyword= or the end
# (an unquoted password with a space in it is what breaks the parse in the first place).
_KV_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.){0,1000}'?|.{0,1000}?)"
    r"(?=\s{1,64}\w+\s*=|\s{0,64}$)",
    re.IGNORECASE | re.DOTALL)
_PIECES = re.compile(r"[@/?#:\s]+")
#: Shorter secrets are redacted only as whole words, so that "ab" leaves "table" alone.
_WHOLE_WORD_BELOW = 4


def secrets(dsn: str) -> list[str]:
    """Every text in `dsn` that is its password, or a piece of one a parser could split off;
    longest first."""
    found: set[str] = set()
    if _URL.match(dsn):
        userinfo = dsn.split("://", 1)[1].rpartition("@")[0]
        if ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found |= {raw, unquote(raw), *_PIECES.split(raw)}
        for match in _QUERY_PASSWORD.finditer(dsn):
            raw = match.group(0)[len(match.group("head")):]
            found |= {raw, unquote(raw)}
    else:
        for match in _KV_PASSWORD.finditer(dsn):
            value = match.group("value")
            inner = value.strip("'")
            found |= {value, inner, inner.replace("\\'", "'").replace("\\\\", "\\"),
                      *inner.split()}
    try:
        parsed = conninfo_to_dict(dsn).get("password")
    except Exception:  # psycopg.ProgrammingError: malformed, and covered above
        parsed = None
    if parsed:
        found.add(str(parsed))
    return sorted((s for s in found if s.strip()), key=len, reverse=True)


def redact(message: str, dsn: str | None = None) -> str:
    """`message` with the password of `dsn`, and of any URL or key=value DSN inside it,
    replaced by ``***``."""
    for secret in secrets(dsn) if dsn else ():
        if len(secret) < _WHOLE_WORD_BELOW:
            message = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", message)
        else:
            message = message.replace(secret, "***")
    message = _URL_PASSWORD.sub(r"\g<head>:***@", message)
    message = _QUERY_PASSWORD.sub(r"\g<head>***", message)
    return _KV_PASSWORD.sub(r"\g<head>***", message)


def describe(dsn: str) -> str:
    """user@host:port/dbname, as libpq would connect (its PG* variables filling the gaps),
    never the password; "?" for a DSN that does not parse."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError
        return "?"
    host = str(parts.get("host") or os.environ.get("PGHOST") or "local socket")
    port = parts.get("port") or os.environ.get("PGPORT")
    user = parts.get("user") or os.environ.get("PGUSER")
    dbname = parts.get("dbname") or os.environ.get("PGDATABASE") or user or ""
    where = f"{host}:{port}" if port else host
    shown = f"{user}@{where}/{dbname}" if user else f"{where}/{dbname}"
    return redact(shown, dsn)


def check(dsn: str) -> None:
    """Refuse a DSN that libpq cannot parse, or whose host shows an unencoded ``@`` of the
    password, with an `InvalidInputError` that never repeats the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError
        reason = redact(" ".join(str(exc).split()), dsn)
        raise InvalidInputError(f"invalid connection string: {reason}") from None
    misread = "@" in str(parts.get("host") or "")
    if _URL.match(dsn):
        # libpq ends the user:password@host part at the first / ? or #, so an @ after one
        # means a password holding one of them, now read as host, port or database name.
        rest = dsn.split("://", 1)[1]
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        misread = misread or ("@" in rest and "@" not in authority and ":" in authority
                              and not authority.rpartition(":")[2].isdigit())
    if misread:
        raise InvalidInputError(
            "invalid connection string: its password seems to hold an unencoded '@', '/', "
            "'?' or '#'; percent-encode them (%40, %2F, %3F, %23)")


def resolve(dsn: str | None) -> str:
    """--dsn, else JOBQ_DSN, else DATABASE_URL, else "" (libpq's PG* variables apply)."""
    return dsn or os.environ.get("JOBQ_DSN") or os.environ.get("DATABASE_URL") or ""


def check_read(read_dsn: str) -> None:
    """A malformed read DSN, refused as the read DSN's, without its password."""
    try:
        check(read_dsn)
    except InvalidInputError as exc:
        raise InvalidInputError(f"read DSN: {exc}") from None


_BAD_OPTION = re.compile(r"\binvalid (?:integer )?(?:\w+ )?value\b")


def refused_option(message: str) -> bool:
    """Whether libpq refused a connection because of a value in the DSN (`sslmode=bogus`,
    `port=x`): bad input, which no retry fixes, rather than an unreachable server."""
    return _BAD_OPTION.search(message) is not None

