"""Opt-in redaction of secrets in a record's free-text fields
(``configure(redact_secrets=...)``): a net under mistakes, such as a token in a
denied request's path (``/invites/{token}``), never a reason to put secrets in a target.

Each match becomes ``[redacted:<kind>]`` (plain ASCII), the rest of the text is kept.
Only the caller-supplied fields are redacted (``event.TEXT_FIELDS``); ids, times, trace
ids and addresses are not. The redacting path is chosen at configure time
(``_redacting``), so with the option off (the default) no event pays for it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import AuditConfigurationError

#: A field is scanned up to its cap plus this much: a secret that starts before the cap
#: is seen whole (a PEM block of a 4096-bit RSA key is ~3.3 KB), and a megabyte target
#: costs no megabyte of regex work.
SCAN_MARGIN: Final = 16_384

#: The kind of a caller's extra pattern in its marker.
CUSTOM_KIND: Final = "custom"


def marker(kind: str) -> str:
    return f"[redacted:{kind}]"


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    #: Text one of which every match holds: the rule runs only on a text holding one.
    needles: tuple[str, ...] = ()
    #: For a pattern with a ``secret`` group: whether the match is a credential (the
    #: words "Basic authentication" are none); only that group is replaced.
    looks_secret: Callable[[str], bool] | None = None
    #: Replaces the matches itself, where ``pattern.sub`` would take quadratic time.
    replace: Callable[[str], str] | None = None


def _basic_credentials(token: str) -> bool:
    """``Basic <b64>`` holds base64 of ``user:password``: nothing else is taken for one."""
    try:
        return b":" in base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return False


def _bearer_token(token: str) -> bool:
    """An opaque token has a digit or punctuation (or mixed case, when long): words such
    as "Bearer authentication required" are left as they are."""
    if any(c.isdigit() or c in "-._~+/=" for c in token):
        return True
    return len(token) >= 16 and not token.islower() and not token.isupper()


_B = r"(?<![A-Za-z0-9])"  # a token starts at a boundary ('_' is no boundary for \b)
_E = r"(?![A-Za-z0-9])"

#: The signature is optional: a JWT whose payload runs past the scan window
#: (``SCAN_MARGIN``) is cut before it, and its header and payload are kept from the
#: record all the same.
_JWT: Final = re.compile(_B + r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
_JWT_START: Final = re.compile(_B + "eyJ")
_TOKEN_RUN: Final = re.compile(r"[A-Za-z0-9_-]+")


def _replace_jwt(text: str) -> str:
    """``_JWT.sub``, in linear time. ``_JWT.sub`` tries every ``eyJ`` after a ``-`` or
    ``_`` (a boundary of ``_B``) and scans from each to the end of its run of token
    characters: a field of ``-eyJ`` repeated took ~80 ms at the default cap, the square
    of its length. A start that fails fails for every later start in the same run (its
    first segment can end only where the run does), so the search skips the run."""
    parts: list[str] = []
    pos = 0
    while (start := _JWT_START.search(text, pos)) is not None:
        found = _JWT.match(text, start.start())
        if found is None:
            run = _TOKEN_RUN.match(text, start.start())
            assert run is not None  # "eyJ" begins one
            parts.append(text[pos:run.end()])
            pos = run.end()
            continue
        parts.append(text[pos:found.start()])
        parts.append(marker("jwt"))
        pos = found.end()
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


BUILTIN_RULES: Final[tuple[Rule, ...]] = (
    Rule("private-key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|.*)", re.DOTALL), ("-----BEGIN",)),
    Rule("jwt", _JWT, ("eyJ",), replace=_replace_jwt),
    Rule("aws-access-key", re.compile(_B + r"(?:AKIA|ASIA)[A-Z0-9]{16}" + _E),
         ("AKIA", "ASIA")),
    Rule("github-token", re.compile(
        _B + r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})" + _E),
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    Rule("slack-token", re.compile(_B + r"xox[abprs]-[A-Za-z0-9-]{10,}"), ("xox",)),
    Rule("stripe-key", re.compile(_B + r"[sr]k_live_[A-Za-z0-9]{16,}"), ("k_live_",)),
    Rule("google-api-key", re.compile(_B + r"AIza[0-9A-Za-z_-]{35}"), ("AIza",)),
    # The collector's reader tokens (collector/readers.py, not imported: the app side
    # never imports the collector): ac_<16 hex>_<43 urlsafe>.
    Rule("reader-token", re.compile(_B + r"ac_[0-9a-f]{16}_[A-Za-z0-9_-]{43}"), ("ac_",)),
    # scheme://user:secret@host: the password only, the user and host kept. The
    # pattern starts at "://" (a literal the engine finds fast), a scheme behind it.
    Rule("url-password", re.compile(
        r"(?<=[A-Za-z0-9+.-])://[^\s/?#@:]*:(?P<secret>[^\s/?#@]+)@"), ("://",)),
    # The schemes in any case (HTTP's are case-insensitive): the needles take the
    # common ones, Bearer, bearer and BEARER.
    Rule("bearer", re.compile(r"(?i:\bbearer)\s+(?P<secret>[A-Za-z0-9._~+/-]{8,}=*)"),
         ("earer", "EARER"), _bearer_token),
    Rule("basic", re.compile(r"(?i:\bbasic)\s+(?P<secret>[A-Za-z0-9+/]{4,}={0,2})"),
         ("asic", "ASIC"), _basic_credentials),
)

#: Any rule's needle: a text without one (the common case: ids, names, paths) is left
#: alone after this one search. Literals only: ~0.2-0.5 us a field, where one search
#: of every rule's pattern took 4-7 us (docs/record.md, "Redacting secrets").
_NEEDLES: Final = re.compile("|".join(re.escape(n) for r in BUILTIN_RULES for n in r.needles))


def _replace(rule: Rule, text: str) -> str:
    if rule.replace is not None:
        return rule.replace(text)
    if "secret" not in rule.pattern.groupindex:
        return rule.pattern.sub(marker(rule.kind), text)
    looks_secret = rule.looks_secret

    def keep_around_secret(match: re.Match[str]) -> str:
        secret = match.group("secret")
        if looks_secret is not None and not looks_secret(secret):
            return match.group()
        start, end = match.span()
        return (text[start:match.start("secret")] + marker(rule.kind)
                + text[match.end("secret"):end])

    return rule.pattern.sub(keep_around_secret, text)


class Redactor:
    """``redactor(text)``: ``text`` with every secret the rules find replaced."""

    def __init__(self, extra: tuple[re.Pattern[str], ...] = ()) -> None:
        self.extra = tuple(Rule(CUSTOM_KIND, p) for p in extra)

    def __call__(self, text: str) -> str:
        if _NEEDLES.search(text) is not None:
            for rule in BUILTIN_RULES:
                for needle in rule.needles:
                    if needle in text:
                        text = _replace(rule, text)
                        break
        for rule in self.extra:
            text = _replace(rule, text)
        return text


_WHAT = ("redact_secrets must be True (the built-in patterns), False, or a list of extra "
         "patterns (str or re.compile(...)) redacted on top of the built-in ones")


def redactor_from_option(value: object) -> Redactor | None:
    """The redactor ``configure(redact_secrets=value)`` asks for, None for off; a value
    that is neither fails here, at start-up, saying what to pass."""
    if value is True:
        return Redactor()
    if value is False:
        return None
    if isinstance(value, (str, bytes, re.Pattern)):
        raise AuditConfigurationError(
            f"{_WHAT}: got the single pattern {value!r}; pass it in a list, "
            f"redact_secrets=[{value!r}]")
    if isinstance(value, (bool, int, float)) or value is None or not hasattr(value, "__iter__"):
        raise AuditConfigurationError(f"{_WHAT}, got {value!r}")
    return Redactor(tuple(_extra_pattern(p) for p in value))


def _extra_pattern(value: object) -> re.Pattern[str]:
    if isinstance(value, str):
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise AuditConfigurationError(
                f"redact_secrets: {value!r} is no regular expression ({error}): escape "
                f"literal text with re.escape()") from None
    elif isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        pattern = value
    else:
        raise AuditConfigurationError(
            f"redact_secrets: each extra pattern must be a str or a compiled str pattern "
            f"(re.compile('...')), got {value!r}")
    if pattern.search("") is not None:
        raise AuditConfigurationError(
            f"redact_secrets: the pattern {pattern.pattern!r} matches the empty text, so it "
            f"would mark every position of every field: make it match at least one character")
    return pattern
