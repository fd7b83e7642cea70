"""A forwarding endpoint's URL as the collector may show it: without credentials, and
with its query's values hidden (``?api_key=***``), in what the collector prints itself
(``shown_endpoint``) and in an HTTP library's text that quotes it (``hide_query_values``).
A receiver's key in the query was printed whole wherever the endpoint was."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part (never written to the checkpoint)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def shown_endpoint(url: str) -> str:
    """``url`` as it may be shown (start-up summary, logs, stats, the checkpoint file):
    without credentials, each query value and any fragment hidden, the query's names
    kept (``?api_key=***&tenant=***``) to tell what was set. A receiver's key in the query
    was printed whole wherever the endpoint was (see the module's doc)."""
    parts = urlsplit(without_credentials(url))
    if not parts.query and not parts.fragment:
        return without_credentials(url)
    query = "&".join(_hidden_value(item) for item in parts.query.split("&"))
    return urlunsplit(parts._replace(query=query, fragment="***" if parts.fragment else ""))


def _hidden_value(item: str) -> str:
    name, sep, _ = item.partition("=")
    return f"{name}=***" if sep else "***" if item else ""  # no '=': a bare value


#: A query parameter of a URL quoted in free text (an HTTP library's error, which names
#: the URL it failed to reach): its value up to the next separator or space. Quotes and
#: parentheses may be part of a value (unencoded): stopped at them, ``k=ab(cd`` showed
#: ``cd``; a quote or parenthesis closing the quoted URL goes with the value instead.
_QUERY_VALUE: Final = re.compile(r"([?&][^=&#\s'\"]*=)[^&#\s]+")
#: A URL's whole query in free text, from its ``?`` to a space or fragment: its items
#: without a name (``?s3cr3t``), which ``_QUERY_VALUE`` leaves, are values too.
_QUERY: Final = re.compile(r"\?([^#\s]+)")


def hide_query_values(text: str) -> str:
    """``text`` with the value of every query parameter of a URL in it hidden:
    ``requests`` names the URL with its query in a connection failure, and that text
    reached the log and stats' ``last_error``. As ``shown_endpoint``: a value without a
    name (``?s3cr3t``) is hidden too (it was shown whole)."""
    text = _QUERY.sub(lambda m: "?" + "&".join(map(_hidden_value, m[1].split("&"))), text)
    return _QUERY_VALUE.sub(r"\1***", text)
