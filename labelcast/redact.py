"""Masking secrets (URL passwords, tokens) in anything labelcast logs, raises or publishes.

FFmpeg puts the whole URL, password included, into its error messages, so every
message that may carry a source's error goes through ``Redactor.text`` (or the
module-level ``redact``) before it is logged, raised or handed to the sinks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

# ``scheme://user:password@`` anywhere in a text. The password may hold raw ``@`` and
# ``:`` (users paste them unencoded), so it runs to the last ``@`` before the first
# ``/``, space or quote; URL-encoded passwords have no raw ``/`` by construction.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"]*:)(?P<password>[^\s/'\"]*)@"
)
# Secrets shorter than this are masked only inside URLs: masking "1" or "ab" everywhere
# would garble messages without protecting anything.
_MIN_LITERAL = 3


def redact_url(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``; the host stays visible."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", url)


def url_secrets(url: str) -> tuple[str, ...]:
    """Return the forms a URL's password may take in messages: as written, decoded, encoded."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
    if password is None:
        # urlsplit gives up on raw "@" or "/" in the password; the regex does not.
        match = _URL_PASSWORD.search(url)
        password = match.group("password") if match else None
    if not password:
        return ()
    forms = {password, unquote(password), quote(unquote(password), safe="")}
    return tuple(sorted(forms, key=len, reverse=True))


class Redactor:
    """Masks URL passwords and a fixed set of known secrets in free text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if s and len(s) >= _MIN_LITERAL}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(known, key=len, reverse=True)

    @classmethod
    def for_url(cls, url: str, extra: Iterable[str] = ()) -> Redactor:
        """Make a redactor for messages about ``url``: its password in every form, and ``extra``."""
        return cls((*url_secrets(url), *extra))

    def text(self, message: object) -> str:
        """Return ``str(message)`` with every URL password and known secret masked."""
        result = redact_url(str(message))
        for secret in self._secrets:
            result = result.replace(secret, MASK)
        return result


def redact(message: object, secrets: Iterable[str] = ()) -> str:
    """Return ``str(message)`` with URL passwords and the given ``secrets`` masked."""
    return Redactor(secrets).text(message)
