"""Masking secrets (URL passwords, tokens) in anything labelcast logs, raises or publishes.

FFmpeg puts the whole URL, password included, into its error messages, so every
message that may carry a source's error goes through ``Redactor.text`` (or the
module-level ``redact``) before it is logged, raised or handed to the sinks.

The rule, when in doubt, is to mask more: everything between ``scheme://`` and the
last ``@`` that could end a user-info part (users paste passwords with raw ``@``,
``/``, ``:`` and spaces), and every ``key=value`` whose key looks like a secret
(``token``, ``password``, ``sig``, ...), in query strings and elsewhere. A redactor
made for a configured URL (and its FFmpeg options) also masks those exact secrets
wherever they appear, in every encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, unquote_plus

MASK = "***"

# A URL starts with a scheme and "://"; its user-info runs to the last "@" before the
# end of the URL, which, since passwords may hold spaces, quotes, "/" and even "://",
# is only known for sure at a line end.
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_END = re.compile(r"[\r\n]")
# A user name shown as is: RFC 3986 user-info characters without ":" (anything else
# means the URL is malformed and the whole user-info is masked).
_PLAIN_USER = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=\-]*")
# ``key=value`` (query parameters, FFmpeg option strings, ``k=v`` log text); the value
# leaves out punctuation that ends the sentence around it ("...?sig=x: refused").
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)="
    r"(?P<value>[^&#\s'\"<>]*?)(?=[:,.;)\]]*(?:[&#\s'\"<>]|$))"
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Words of a key that mark its value as a secret, and fragments that do anywhere.
_SECRET_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "jwt",
        "key",
        "pass",
        "passphrase",
        "passwd",
        "password",
        "pw",
        "pwd",
        "secret",
        "session",
        "sessionid",
        "sig",
        "signature",
        "token",
    }
)
_SECRET_FRAGMENTS = ("token", "passw", "secret", "apikey", "signature", "credential", "auth")
# FFmpeg options whose values hold credentials whatever their name says.
_SECRET_OPTIONS = frozenset({"headers", "cookies"})
# Secrets shorter than this are masked only inside URLs and key=value pairs: masking
# "1" or "ab" everywhere would garble messages without protecting anything.
_MIN_LITERAL = 3


def looks_secret(key: str) -> bool:
    """Whether a query parameter or option named ``key`` probably holds a secret."""
    lowered = key.lower()
    if any(fragment in lowered for fragment in _SECRET_FRAGMENTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(key))


def _user_info_end(text: str, start: int) -> int:
    """Find the "@" ending the user-info of a URL whose authority starts at ``start``.

    Returns its index, or -1 when the URL has no user-info.
    """
    end = _URL_END.search(text, start)
    return text.rfind("@", start, len(text) if end is None else end.start())


def _masked_user_info(user_info: str) -> str:
    user, colon, _ = user_info.partition(":")
    if colon and _PLAIN_USER.fullmatch(user):
        return f"{user}:{MASK}"
    return MASK


def _redact_urls(text: str) -> str:
    parts: list[str] = []
    position = 0
    for match in _SCHEME.finditer(text):
        start = match.end()
        if start < position:
            continue  # inside a user-info already masked
        at = _user_info_end(text, start)
        if at < 0:
            continue
        parts.append(text[position:start])
        parts.append(_masked_user_info(text[start:at]))
        position = at
    parts.append(text[position:])
    return "".join(parts)


def _redact_key_values(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        if not match.group("value") or not looks_secret(match.group("key")):
            return match.group(0)
        return f"{match.group('key')}={MASK}"

    return _KEY_VALUE.sub(mask, text)


def redact_url(url: str) -> str:
    """Return ``url`` (or any text) with user-info passwords and secret parameters masked.

    The host stays visible; so does the user name of a well-formed ``user:password@``.
    """
    return _redact_key_values(_redact_urls(url))


def _forms(secret: str) -> set[str]:
    """Return the ways ``secret`` may be written in a message: as given, decoded, encoded."""
    decoded = unquote(secret)
    return {secret, decoded, unquote_plus(secret), quote(decoded, safe="")}


def url_secrets(url: str) -> tuple[str, ...]:
    """Return the forms a URL's secrets may take in messages.

    They are its password (or its whole user-info, when malformed) and its secret
    query values; each as written, decoded and encoded.
    """
    secrets: set[str] = set()
    for match in _SCHEME.finditer(url):
        at = _user_info_end(url, match.end())
        if at < 0:
            continue
        user_info = url[match.end() : at]
        user, colon, password = user_info.partition(":")
        if colon and _PLAIN_USER.fullmatch(user):
            secrets |= _forms(password)
        else:
            secrets |= _forms(user_info)
    for match in _KEY_VALUE.finditer(url):
        if looks_secret(match.group("key")):
            secrets |= _forms(match.group("value"))
    return _longest_first(secrets)


def option_secrets(options: Mapping[str, object]) -> tuple[str, ...]:
    """Return the secrets in FFmpeg ``options``.

    They are the values of secret-looking keys, header and cookie values, and the
    secrets of URLs given as values.
    """
    secrets: set[str] = set()
    for key, value in options.items():
        text = str(value)
        secrets |= set(url_secrets(text))
        if not (looks_secret(key) or key.lower() in _SECRET_OPTIONS):
            continue
        secrets |= _forms(text)
        # "Authorization: Bearer x\r\nX-Api-Key: y" and "a=b; c=d": each value too.
        for line in re.split(r"[\r\n;]+", text):
            for separator in (":", "="):
                _, found, rest = line.partition(separator)
                if found and rest.strip():
                    secrets |= _forms(rest.strip())
                    _scheme, space, credentials = rest.strip().partition(" ")
                    if space and credentials.strip():
                        secrets |= _forms(credentials.strip())
                    break
    return _longest_first(secrets)


def _longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so a secret that contains another is masked whole.
    return tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


class Redactor:
    """Masks URL passwords, secret parameters and a fixed set of known secrets in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = _longest_first(s for s in secrets if len(s) >= _MIN_LITERAL)

    @classmethod
    def for_url(
        cls, url: str, extra: Iterable[str] = (), options: Mapping[str, object] | None = None
    ) -> Redactor:
        """Make a redactor for messages about ``url`` opened with FFmpeg ``options``.

        It masks the URL's secrets in every form, the options' secrets, and ``extra``.
        """
        return cls((*url_secrets(url), *option_secrets(options or {}), *extra))

    def text(self, message: object) -> str:
        """Return ``str(message)`` with known secrets, URL passwords and secret values masked."""
        result = str(message)
        # Known secrets first: they are exact, and the generic rules would cut them up.
        for secret in self._secrets:
            result = result.replace(secret, MASK)
        return redact_url(result)


def redact(message: object, secrets: Iterable[str] = ()) -> str:
    """Return ``str(message)`` with URL passwords, secret parameters and ``secrets`` masked."""
    return Redactor(secrets).text(message)
