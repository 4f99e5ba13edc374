"""Hiding credentials: in store URLs, in text that may echo them, in log records.

One module owns the rules so that settings, stores, the daemon and its logs
agree on what is hidden:

* :func:`redact_url` hides the password of one URL (the user part too for
  Redis URLs that carry only one name, ``redis://secret@host``: often a
  password missing its leading colon) and the values of credential query
  parameters (:data:`CREDENTIAL_PARAMETERS`).
* :func:`redact_text` finds URLs (``scheme://user:password@host...``) and
  ``password=...`` conninfo pairs inside any text (an error message, a log
  line) and hides only those parts. Nothing else in the text changes: a
  password that happens to be an ordinary word (``e``, ``postgres``) is not
  searched for elsewhere.
* :class:`RedactingFilter` applies :func:`redact_text` to log records, and
  :func:`install_log_redaction` puts it on every configured log handler.

Every hidden part is replaced by ``***``. None of these functions raises.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = [
    "CREDENTIAL_PARAMETERS",
    "MASK",
    "RedactingFilter",
    "install_log_redaction",
    "is_credential_parameter",
    "redact_text",
    "redact_url",
]

MASK = "***"

#: Query parameters of a store URL whose values are credentials (compared
#: without case). Any name ending in ``password``, ``passwd``, ``secret`` or
#: ``token`` counts too (``sslpassword``, ``client_secret``, ``auth_token``).
CREDENTIAL_PARAMETERS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        "secret",
        "token",
        "access_key",
        "secret_key",
        "api_key",
        "apikey",
        "credentials",
    }
)
_CREDENTIAL_SUFFIXES = ("password", "passwd", "secret", "token")

#: Keys of ``key=value`` pairs hidden in free text (libpq conninfo strings
#: such as ``host=db password=pw``). Shorter names like ``pass`` or
#: ``token`` are hidden only inside URLs: in prose they are ordinary words.
_CONNINFO_PASSWORD = re.compile(
    r"(?<![A-Za-z0-9_])(?:password|passwd|sslpassword)\s*=\s*"
    r"('(?:[^'\\]|\\.)*'?|[^\s'\"&]+)",
    re.IGNORECASE,
)

# A URL inside text: a scheme, '://' and everything up to a blank or a quote.
# No look-behind: a scheme glued to what precedes it (a digit, a terminal
# colour code) still starts a URL, read by the known scheme it ends with.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")

# Base schemes (the part before any "+driver") that SQLAlchemy parses.
_SQLALCHEMY_SCHEMES = frozenset(
    {"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb"}
)
# Schemes whose lone user part is the password (``redis://secret@host``).
_PASSWORD_ONLY_SCHEMES = frozenset({"redis", "rediss", "unix", "valkey", "valkeys"})
# Longest first: a scheme glued to the text before it ("xredis", or the "m"
# ending a terminal colour code) is read as the known scheme it ends with.
_KNOWN_BASES = sorted(_SQLALCHEMY_SCHEMES | _PASSWORD_ONLY_SCHEMES, key=len, reverse=True)


def _known_base(base: str) -> str:
    """``base``, or the known scheme it ends with when something is glued in front."""
    if base in _SQLALCHEMY_SCHEMES or base in _PASSWORD_ONLY_SCHEMES:
        return base
    return next((known for known in _KNOWN_BASES if base.endswith(known)), base)


def is_credential_parameter(name: str) -> bool:
    """Whether a URL query parameter called ``name`` holds a credential."""
    key = name.strip().lower()
    return key in CREDENTIAL_PARAMETERS or key.endswith(_CREDENTIAL_SUFFIXES)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every credential in ``url``, which starts with ``scheme://``."""
    match = _SCHEME.match(url)
    if match is None:
        return []
    scheme = match.group(1).lower()
    base = _known_base(scheme.split("+", 1)[0])
    start = match.end()
    rest = url[start:]
    spans: list[tuple[int, int]] = []
    # urllib (redis-py) reads userinfo up to the last '@' of the authority,
    # which ends at the first '/', '?' or '#'.
    authority_end = len(rest)
    for char in "/?#":
        found = rest.find(char)
        if found != -1:
            authority_end = min(authority_end, found)
    last_at = rest.rfind("@", 0, authority_end)
    # SQLAlchemy reads a user up to the first ':' or '/', then a password up
    # to the first '@' (a raw '/' or '?' in the password stays in it).
    colon = len(rest)
    for char in ":/":
        found = rest.find(char)
        if found != -1:
            colon = min(colon, found)
    secret_end = -1
    if colon < len(rest) and rest[colon] == ":":
        ends = []
        if colon < last_at:
            ends.append(last_at)
        if "+" in scheme or base in _SQLALCHEMY_SCHEMES:
            ends.append(rest.find("@", colon + 1))
        secret_end = max(ends, default=-1)
        if secret_end > colon + 1:
            spans.append((start + colon + 1, start + secret_end))
    if secret_end == -1 and last_at > 0 and base in _PASSWORD_ONLY_SCHEMES:
        userinfo = rest[:last_at]
        if ":" not in userinfo:
            spans.append((start, start + last_at))
            secret_end = last_at
    query = rest.find("?", max(secret_end, 0))
    if query != -1:
        position = start + query + 1
        for pair in url[position:].split("&"):
            name, equals, value = pair.partition("=")
            if equals and value and is_credential_parameter(name):
                value_start = position + len(name) + 1
                spans.append((value_start, value_start + len(value)))
            position += len(pair) + 1
    return spans


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    for begin, end in sorted(spans, reverse=True):
        text = text[:begin] + MASK + text[end:]
    return text


def _redact_one_url(url: str) -> str:
    return _mask_spans(url, _secret_spans(url))


def redact_url(url: Any) -> str:
    """``url`` with its password (and credential query values) replaced by ``***``.

    SQLAlchemy URLs are rendered by SQLAlchemy with the password hidden;
    every URL then has its credential parts hidden as :func:`redact_text`
    finds them. Text that is not a URL loses anything before an ``@``.
    Never raises.
    """
    try:
        text = url if isinstance(url, str) else str(url)
        match = _SCHEME.match(text.strip())
        if match is None:
            # Not a URL at all: hide anything before an '@' (it may be credentials).
            return re.sub(r"^[^@]*@", MASK + "@", text) if "@" in text else text
        text = text.strip()
        scheme = match.group(1).lower()
        if "+" in scheme or scheme in _SQLALCHEMY_SCHEMES:
            try:
                from sqlalchemy.engine import make_url

                text = make_url(text).render_as_string(hide_password=True)
            except Exception:
                pass  # hidden by hand below
        return _redact_one_url(text)
    except Exception:
        return MASK


def redact_text(text: Any) -> str:
    """``text`` with the credentials of every URL and conninfo string in it hidden.

    Only the password parts change (see the module documentation); a text
    without ``://`` or ``=`` is returned as it is. Never raises.
    """
    try:
        text = text if isinstance(text, str) else str(text)
        if "://" in text:
            text = _URL_IN_TEXT.sub(lambda m: _redact_one_url(m.group(0)), text)
        if "=" in text:
            text = _CONNINFO_PASSWORD.sub(_mask_conninfo, text)
        return text
    except Exception:
        return MASK


def _mask_conninfo(match: re.Match[str]) -> str:
    whole = match.group(0)
    return whole[: match.start(1) - match.start(0)] + MASK


class RedactingFilter(logging.Filter):
    """A logging filter hiding credentials (see :func:`redact_text`) in records.

    It rewrites the message, the formatted traceback and the stack of a
    record; records without credentials pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction() -> None:
    """Put a :class:`RedactingFilter` on every handler configured so far."""
    loggers = [logging.getLogger()]
    loggers += [
        item
        for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
