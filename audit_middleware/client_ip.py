"""Client IP resolution behind trusted proxies.

The socket peer is the client unless the peer is a configured trusted proxy. Then the
forwarding header the proxies write (``X-Forwarded-For`` or RFC 7239 ``Forwarded``; one
of them, chosen by configuration, because a proxy that appends to one header leaves the
other entirely client-controlled) is walked right to left, skipping trusted hops, to the
first untrusted hop: everything left of it was written by someone we do not trust.

Nothing is trusted by default. Malformed values never raise: a hop that is not an IP
address (``unknown``, an obfuscated ``_identifier``, garbage) cannot be attributed, so
the client IP is then empty and the peer is kept in ``peer_ip`` for the investigator.

A proxy on the same host often reaches the app over a unix socket (nginx to gunicorn or
uvicorn ``--uds``): the server then hands over no peer address at all (ASGI
``scope["client"]`` None, WSGI ``REMOTE_ADDR`` empty), so no IP or CIDR could trust it,
and every event behind it had an empty client IP. The entry ``"unix"`` trusts such a
peer (the record's ``peer_ip`` then says ``unix``). Only for an app that listens on a
unix socket alone: on TCP a peer can have no address too (uvicorn hands over
``scope["client"]`` None for a client that reset the connection before it asked), and
``RequestContext.resolution`` trusts none whose ASGI ``scope["server"]`` names a port.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from .errors import AuditConfigurationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]

#: Hops examined from the right; a longer chain is cut (its left end is untrusted anyway).
MAX_HOPS: Final = 32
#: Characters of header value examined, from the right end.
MAX_HEADER_CHARS: Final = 8192


log = logging.getLogger("audit_middleware")

#: IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``), which ``parse_ip`` reads as IPv4.
_IPV4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
#: The ``trusted_proxies`` entry that trusts a peer without an address (a unix socket),
#: and the ``peer_ip`` recorded for one.
UNIX: Final = "unix"


class Resolution(NamedTuple):
    client_ip: str
    #: The socket peer, when it differs from ``client_ip`` (forwarded or unresolvable).
    peer_ip: str


class TrustedProxies:
    """A set of IPs and CIDRs (IPv4 and IPv6), and ``"unix"`` (a peer on a unix socket,
    which has no address), validated at construction.

    An IPv4 address and its IPv4-mapped IPv6 form are one address (``parse_ip``): an
    entry written mapped (``::ffff:10.0.0.1``, ``::ffff:10.0.0.0/104``) is its IPv4
    network. A wider IPv6 block (``::/0``, ``::/64``) trusts IPv6 peers only: trust is
    never wider than what the operator wrote as such, so IPv4 is trusted as IPv4."""

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        if proxies is None:
            proxies = ()
        elif isinstance(proxies, (bytes, bytearray)):  # else its ints were the entries
            raise AuditConfigurationError(
                f"trusted_proxies must be text, not bytes: decode {proxies!r} first")
        elif isinstance(proxies, str):
            proxies = [p for p in proxies.split(",") if p.strip()]
        try:
            entries = list(proxies)
        except TypeError:
            raise AuditConfigurationError(
                f"trusted_proxies must be a list of IPs and CIDR networks (or one string of "
                f"them, comma separated), got {type(proxies).__name__}") from None
        networks: list[IPNetwork] = []
        self.unix = False
        for entry in entries:
            if isinstance(entry, str) and entry.strip().lower() == UNIX:
                self.unix = True
                continue
            if isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                                  ipaddress.IPv4Network, ipaddress.IPv6Network)):
                entry = str(entry)  # the same value, as text
            text = entry.strip() if isinstance(entry, str) else ""
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise AuditConfigurationError(
                    f"trusted proxy {entry!r} is not an IP address or CIDR network "
                    f"(examples: '10.0.0.1', '10.0.0.0/8', '2001:db8::/32'), nor 'unix' "
                    f"(a proxy that reaches the app over a unix socket)"
                ) from None
            # The zone of the address as written: the network's own drops it when host
            # bits are set (fe80::1%eth0/64 is fe80::/64), and the host-bits error then
            # told to write fe80::1%eth0, refused in turn.
            written = ipaddress.ip_address(text.split("/")[0])  # valid: a network's is
            zone = getattr(written, "scope_id", None)
            if zone:
                # Hops and peers are matched without their zone (parse_ip drops it), so
                # fe80::1%eth0 trusted fe80::1 on every interface, as its repr hid.
                plain = text.replace(f"%{zone}", "")
                raise AuditConfigurationError(
                    f"trusted proxy {entry!r} has a zone id (%{zone}), which is not "
                    f"matched: write {plain!r}, which trusts that address from any "
                    f"interface")
            if "/" in text and written != network.network_address:
                # 10.0.0.1/8 trusts all of 10.0.0.0/8: a typo for 10.0.0.1/32, or for the
                # block? Whoever is trusted can name any client IP: say it, do not guess.
                raise AuditConfigurationError(
                    f"trusted proxy {entry!r} has host bits set: write the network "
                    f"{network} to trust all of it, or {text.split('/')[0]} alone")
            if (isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96
                    and network.subnet_of(_IPV4_MAPPED)):
                # Peers and hops in IPv4-mapped form are read as IPv4 (parse_ip), as a
                # dual-stack listener reports an IPv4 proxy: so is the entry (written
                # mapped, it was accepted and never matched: the proxy became the client).
                network = ipaddress.IPv4Network(
                    (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
            if network.prefixlen == 0:
                # Trust never crosses IP versions (_contains): ::/0 trusts no IPv4 peer,
                # so name the version, or the operator reads it as trusting everyone.
                log.warning("audit: trusted proxy %s trusts every IPv%d address: any such "
                            "client can then name its own client IP in forwarding headers",
                            network, network.version)
            networks.append(network)
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        # The same few proxy addresses repeat on every request: cache the verdict.
        self.contains = lru_cache(maxsize=1024)(self._contains)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def _contains(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks] + [UNIX] * self.unix!r})"


def parse_ip(token: str) -> IPAddress | None:
    """An IP from one hop value: strips quotes, ``[v6]:port`` brackets and ``v4:port``;
    an IPv4-mapped IPv6 address becomes IPv4. Anything else is None."""
    value = token.strip().strip('"').strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:
            # A zone (``fe80::1%eth0``) means nothing past its own link, and ipaddress
            # takes any text after the %: control characters and all would be recorded
            # as the client IP.
            return ipaddress.IPv6Address(value.split("%", 1)[0])
    return ip


def _split_outside_quotes(text: str, separator: str) -> list[str] | None:
    """``text`` split on ``separator`` outside quoted-strings; None if a quote is left
    open (the text is malformed)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        return None
    parts.append("".join(current))
    return parts


def forwarded_for_values(header: str) -> list[str]:
    """The ``for=`` value of each element of an RFC 7239 ``Forwarded`` header, in order;
    an element without ``for``, or malformed, gives an empty hop (which stops the walk).

    Elements are split at *every* comma, quotes or not. A quote a client leaves open
    (``Forwarded: for=6.6.6.6;by="``) must not reach across the comma into the element
    the trusted proxy appends after it (``, for=<the real client>``): read quote-aware,
    that element would vanish inside the client's quoted-string and the client's own
    ``for`` would be taken as the hop. A quoted-string holding a comma, which no IP or
    obfuscated identifier does, becomes a malformed element, never a forged hop.

    An element naming ``for`` twice is malformed too (RFC 7239 allows each parameter once
    per element): a proxy that writes client text into its own element
    (``for=<client>;host=$http_host``) would otherwise let ``Host: x;for=6.6.6.6`` name
    the hop, the last ``for`` winning. A ``,`` in that text ends the proxy's element and
    starts one the client wrote, which nothing tells from a proxy's: no proxy may write
    client text into ``Forwarded`` (docs/record.md)."""
    return [_element_for(element) for element in header.split(",")]


def _element_for(element: str) -> str:
    """The ``for=`` value of one ``Forwarded`` element; empty when it has none, or it is
    malformed."""
    values = [raw.strip() for name, sep, raw in
              (pair.partition("=") for pair in _split_outside_quotes(element, ";") or ())
              if sep and name.strip().lower() == "for"]
    if len(values) != 1:
        return ""
    value = values[0]
    if value.startswith('"'):
        # A quoted-string must be closed; a malformed one is unattributable.
        closed = len(value) >= 2 and value.endswith('"')
        value = value[1:-1].replace('\\"', '"') if closed else ""
    return value


def _hops(header: str, kind: ForwardedHeader) -> list[str]:
    # Whole when a comma ends what is left off, blanks after it or not (RFC 9110 joins
    # repeated header lines with ", ", as ``RequestContext.header`` does).
    cut = (len(header) > MAX_HEADER_CHARS
           and header[:-MAX_HEADER_CHARS].rstrip(" \t")[-1:] != ",")
    if len(header) > MAX_HEADER_CHARS:
        header = header[-MAX_HEADER_CHARS:]
    hops = forwarded_for_values(header) if kind == "forwarded" else header.rsplit(",", MAX_HOPS)
    if cut:
        # The hop the cut falls in is not the one sent, and not one more is read: only
        # its tail, which a client may write (a proxy's element ending in a Host header
        # padded to the cut and ";for=<anyone>": its own for= cut off, that one alone).
        hops[0] = ""
    return hops[-MAX_HOPS:]


def resolve_client_ip(
    peer: str,
    forwarded: str | None,
    trusted: TrustedProxies,
    kind: ForwardedHeader = "x-forwarded-for",
) -> Resolution:
    """Decide the client IP of one request (``peer``: the server's peer address, empty
    when it has none: a unix socket). Never raises."""
    if not trusted:
        return Resolution(peer, "")
    try:
        client: IPAddress | None = None
        if not peer:
            # No address: a unix socket peer, trusted only as "unix". Without a
            # forwarding header the client is unknown, and peer_ip says how it came.
            if not trusted.unix:
                return Resolution("", "")
            if not forwarded:
                return Resolution("", UNIX)
            peer = UNIX
        else:
            client = parse_ip(peer)
            if client is None or not trusted.contains(client) or not forwarded:
                return Resolution(peer, "")
        assert forwarded is not None
        for token in reversed(_hops(forwarded, kind)):
            hop = parse_ip(token)
            if hop is None:
                return Resolution("", peer)  # an untrusted hop we cannot attribute
            client = hop
            if not trusted.contains(hop):
                break
        if client is None:  # a unix peer's header held no hop
            return Resolution("", peer)
        # Every hop trusted: the leftmost one is as far as anyone can see.
        return Resolution(str(client), peer) if str(client) != peer else Resolution(peer, "")
    except Exception:  # noqa: BLE001 - malformed input must never fail a request
        return Resolution("", peer)
