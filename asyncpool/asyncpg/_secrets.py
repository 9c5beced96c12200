"""Passwords: where they are in a DSN, and keeping them out of reprs, log
lines and exception messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit


class Secrets:
    """The passwords in a connector's arguments, and how to keep them out of
    reprs, log records and exception messages."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add_from(self, dsn: str | None, connect_kwargs: dict[str, Any]) -> None:
        password = connect_kwargs.get("password")
        if isinstance(password, str):
            self._add(password)
        if dsn:
            for raw in dsn_passwords(dsn):
                self._add(raw)
                self._add(unquote(raw))

    def _add(self, value: str) -> None:
        if value:
            self._values.add(value)

    def mask(self, text: str) -> str:
        # Longest first, so a password that contains another is fully masked.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, "***")
        return text

    def leaks(self, exc: BaseException) -> bool:
        if not self._values:
            return False
        for link in exception_chain(exc):
            text = f"{link!s} {link.args!r}"
            if any(value in text for value in self._values):
                return True
        return False

    def scrub(self, exc: BaseException) -> BaseException:
        """``exc`` itself if no password is in it or its chain, else a copy of
        the same type (where it can be built) with the password masked and
        without the chain."""
        if not self.leaks(exc):
            return exc
        message = self.mask(str(exc))
        try:
            clean = type(exc)(message)
        except Exception:
            clean = ConnectionError(message)
        if self.leaks(clean):  # pragma: no cover - a type that re-adds it
            clean = ConnectionError(f"{type(exc).__name__} (message withheld: it contained a password)")
        clean.__suppress_context__ = True
        return clean


def dsn_passwords(dsn: str) -> list[str]:
    found: list[str] = []
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    netloc = parts.netloc if parts is not None else dsn
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    found.extend(m.group(1) for m in re.finditer(r"(?:^|[?&\s])password=([^&\s]*)", dsn))
    return found


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password shown as ``***``, safe to print or log.

    Handles URLs (``postgresql://user:secret@host/db``, ``?password=secret``)
    and libpq keyword strings (``host=h password=secret``).
    """
    if "://" in dsn:
        # Up to the last "@": a password with a stray "/" or "@" stays hidden.
        masked = re.sub(r"(://[^:/?#@\s]*:)\S*@", r"\1***@", dsn)
        return re.sub(r"([?&]password=)[^&#\s]*", r"\1***", masked, flags=re.IGNORECASE)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def masked_or_withheld(dsn: str) -> str:
    """``repr(mask_dsn(dsn))``, or a placeholder when some password field of
    ``dsn`` is spelled in a way masking does not reach."""
    masked = mask_dsn(dsn)
    if any(found != "***" for found in dsn_passwords(masked)):
        return "(DSN withheld: its password could not be masked)"
    return repr(masked)


def exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None else link.__context__
