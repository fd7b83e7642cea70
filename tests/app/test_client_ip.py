"""Client IP resolution, through real requests into a tiny Starlette app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditConfigurationError, AuditMiddleware, audited
from audit_middleware.client_ip import MAX_HEADER_CHARS
from audit_middleware.event import AuditEvent


@audited("bucket_created", target=lambda call: "b1")
async def create_bucket(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


def request_from(
    peer: str, headers: dict[str, str], events: list[AuditEvent], **options: object
) -> AuditEvent:
    app = AuditMiddleware(Starlette(routes=[Route("/b", create_bucket, methods=["POST"])]),
                          **options)  # type: ignore[arg-type]
    client = TestClient(app, client=(peer, 50000))
    before = len(events)
    assert client.post("/b", headers=headers).status_code == 200
    assert len(events) == before + 1
    return events[-1]


PROXY = ["10.0.0.0/8", "2001:db8:ffff::/48"]
#: A Forwarded element of exactly the characters read of a header.
FILLED_ELEMENT = "for=198.51.100.7;host=" + "x" * (MAX_HEADER_CHARS - 22)
assert len(FILLED_ELEMENT) == MAX_HEADER_CHARS

CASES = [
    # (name, peer, headers, options, expected client_ip, expected peer_ip)
    ("no proxy trusted: XFF is ignored", "203.0.113.9",
     {"X-Forwarded-For": "1.2.3.4"}, {}, "203.0.113.9", ""),
    ("untrusted peer cannot spoof", "203.0.113.9",
     {"X-Forwarded-For": "1.2.3.4"}, {"trusted_proxies": PROXY}, "203.0.113.9", ""),
    ("trusted proxy: rightmost untrusted hop", "10.0.0.5",
     {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    ("chain of trusted proxies is skipped", "10.0.0.5",
     {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.2.3, 10.9.9.9"},
     {"trusted_proxies": PROXY}, "198.51.100.7", "10.0.0.5"),
    ("repeated headers are combined in order", "10.0.0.5",
     {"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    ("single IP as trusted proxy", "192.0.2.1",
     {"X-Forwarded-For": "198.51.100.7"}, {"trusted_proxies": ["192.0.2.1"]},
     "198.51.100.7", "192.0.2.1"),
    ("all hops trusted: leftmost", "10.0.0.5",
     {"X-Forwarded-For": "10.3.3.3, 10.2.2.2"}, {"trusted_proxies": PROXY},
     "10.3.3.3", "10.0.0.5"),
    ("IPv6 peer and hop", "2001:db8:ffff::1",
     {"X-Forwarded-For": "2001:db8:1::42"}, {"trusted_proxies": PROXY},
     "2001:db8:1::42", "2001:db8:ffff::1"),
    ("IPv4 with port", "10.0.0.5",
     {"X-Forwarded-For": "198.51.100.7:4711"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    ("bracketed IPv6 with port", "10.0.0.5",
     {"X-Forwarded-For": "[2001:db8:1::42]:443"}, {"trusted_proxies": PROXY},
     "2001:db8:1::42", "10.0.0.5"),
    ("IPv4-mapped IPv6 becomes IPv4", "10.0.0.5",
     {"X-Forwarded-For": "::ffff:198.51.100.7"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    ("RFC 7239 Forwarded", "10.0.0.5",
     {"Forwarded": 'for=6.6.6.6, for=198.51.100.7;proto=https;by=10.0.0.5'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "198.51.100.7", "10.0.0.5"),
    ("Forwarded with quoted IPv6 and port", "10.0.0.5",
     {"Forwarded": 'For="[2001:db8:cafe::17]:4711"'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "2001:db8:cafe::17",
     "10.0.0.5"),
    ("Forwarded ignored when XFF is the configured header", "10.0.0.5",
     {"Forwarded": "for=6.6.6.6"}, {"trusted_proxies": PROXY}, "10.0.0.5", ""),
    ("XFF ignored when Forwarded is the configured header", "10.0.0.5",
     {"X-Forwarded-For": "6.6.6.6"},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "10.0.0.5", ""),
    ("Forwarded unknown cannot be attributed", "10.0.0.5",
     {"Forwarded": "for=unknown"},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("Forwarded obfuscated identifier", "10.0.0.5",
     {"Forwarded": "for=_hidden, for=_SEVKISEK"},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("garbage hop", "10.0.0.5",
     {"X-Forwarded-For": "not-an-ip"}, {"trusted_proxies": PROXY}, "", "10.0.0.5"),
    ("garbage left of a real client is never reached", "10.0.0.5",
     {"X-Forwarded-For": "<script>, 198.51.100.7"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    ("empty header from a trusted proxy", "10.0.0.5",
     {"X-Forwarded-For": ""}, {"trusted_proxies": PROXY}, "10.0.0.5", ""),
    ("only commas", "10.0.0.5",
     {"X-Forwarded-For": ",,,"}, {"trusted_proxies": PROXY}, "", "10.0.0.5"),
    ("unterminated quote in Forwarded", "10.0.0.5",
     {"Forwarded": 'for="198.51.100.7'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("a quote left open cannot swallow the proxy's Forwarded element", "10.0.0.5",
     {"Forwarded": 'for=6.6.6.6;by=", for=198.51.100.7'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "198.51.100.7", "10.0.0.5"),
    ("nor its quoted IPv6 one", "10.0.0.5",
     {"Forwarded": 'for=6.6.6.6;x=", for="[2001:db8:cafe::17]:4711"'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "2001:db8:cafe::17",
     "10.0.0.5"),
    ("a comma inside a quoted Forwarded value is malformed, not a hop", "10.0.0.5",
     {"Forwarded": 'for="6.6.6.6, for=198.51.100.7"'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    # RFC 7239 allows a parameter once per element. A proxy writing client text into its
    # own element (nginx: for=$remote_addr;host=$http_host) was made to end it with the
    # client's ";for=6.6.6.6", and the last for= was taken as the hop.
    ("a second for= in the proxy's element is malformed, not the hop", "10.0.0.5",
     {"Forwarded": "for=6.6.6.6, for=198.51.100.7;host=x;for=6.6.6.6"},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("nor the first, quoted or not", "10.0.0.5",
     {"Forwarded": 'for="6.6.6.6";FOR=198.51.100.7'},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    # Only the rightmost MAX_HEADER_CHARS are read: a Host padded to the cut left the
    # tail of the proxy's element, ";for=6.6.6.6" alone, which was taken as the hop.
    ("nor a for= whose element the cut of a huge header falls in", "10.0.0.5",
     {"Forwarded": "for=198.51.100.7;host=" + "x" * MAX_HEADER_CHARS + ";for=6.6.6.6"},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("an element the cut falls just before is whole, and read", "10.0.0.5",
     {"Forwarded": "for=6.6.6.6," + FILLED_ELEMENT},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "198.51.100.7",
     "10.0.0.5"),
    ("and one it falls just before after a comma and a blank too", "10.0.0.5",
     {"Forwarded": "for=6.6.6.6, " + FILLED_ELEMENT},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "198.51.100.7",
     "10.0.0.5"),
    ("but not one whose cut falls after a blank inside it", "10.0.0.5",
     {"Forwarded": "for=6.6.6.6;x=a " + FILLED_ELEMENT},
     {"trusted_proxies": PROXY, "forwarded_header": "forwarded"}, "", "10.0.0.5"),
    ("huge header is cut, rightmost hops still used", "10.0.0.5",
     {"X-Forwarded-For": "1.1.1.1, " * 20000 + "198.51.100.7"}, {"trusted_proxies": PROXY},
     "198.51.100.7", "10.0.0.5"),
    # ipaddress takes any text after an IPv6 zone's %: it was recorded as the client IP,
    # control characters and all (an app-side security review). The zone is dropped.
    ("an IPv6 zone is dropped, whatever it holds", "10.0.0.5",
     {"X-Forwarded-For": "fe80::1%\x1b]0;pwned\x07, 10.0.0.6"},
     {"trusted_proxies": PROXY}, "fe80::1", "10.0.0.5"),
    ("a zone on a trusted hop too", "10.0.0.5",
     {"X-Forwarded-For": "198.51.100.7, 2001:db8:ffff::1%eth0"},
     {"trusted_proxies": PROXY}, "198.51.100.7", "10.0.0.5"),
]


@pytest.mark.parametrize(("peer", "headers", "options", "client_ip", "peer_ip"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_client_ip_resolution(
    peer: str, headers: dict[str, str], options: dict[str, object], client_ip: str,
    peer_ip: str, events: list[AuditEvent],
) -> None:
    event = request_from(peer, headers, events, **options)
    assert (event.client_ip, event.peer_ip) == (client_ip, peer_ip)


def test_repeated_forwarding_headers_are_walked_as_one_list(events: list[AuditEvent]) -> None:
    app = AuditMiddleware(Starlette(routes=[Route("/b", create_bucket, methods=["POST"])]),
                          trusted_proxies=PROXY)
    client = TestClient(app, client=("10.0.0.5", 1))
    client.post("/b", headers=[("x-forwarded-for", "198.51.100.7"),
                               ("x-forwarded-for", "10.2.2.2")])
    assert events[-1].client_ip == "198.51.100.7"


def test_a_quote_left_open_in_one_forwarded_line_cannot_swallow_the_next(
        events: list[AuditEvent]) -> None:
    """The client sends ``Forwarded: for=6.6.6.6;by="``; the trusted proxy adds its own
    line with the real client. The lines are joined with ", ": the open quote must not
    make the proxy's element part of the client's."""
    app = AuditMiddleware(Starlette(routes=[Route("/b", create_bucket, methods=["POST"])]),
                          trusted_proxies=PROXY, forwarded_header="forwarded")
    client = TestClient(app, client=("10.0.0.5", 1))
    client.post("/b", headers=[("forwarded", 'for=6.6.6.6;by="'),
                               ("forwarded", "for=198.51.100.7")])
    assert (events[-1].client_ip, events[-1].peer_ip) == ("198.51.100.7", "10.0.0.5")


def test_peer_ip_is_recorded_only_when_forwarding_was_used(events: list[AuditEvent]) -> None:
    event = request_from("203.0.113.9", {}, events)
    assert "peer_ip" not in event.to_dict()
    forwarded = request_from("10.0.0.5", {"X-Forwarded-For": "198.51.100.7"}, events,
                             trusted_proxies=PROXY)
    assert forwarded.to_dict()["peer_ip"] == "10.0.0.5"


@pytest.mark.parametrize("bad", ["10.0.0.300", "not-a-network", "10.0.0.0/33", ""])
def test_bad_trusted_proxy_fails_at_construction(bad: str) -> None:
    with pytest.raises(AuditConfigurationError, match="trusted proxy"):
        AuditMiddleware(Starlette(), trusted_proxies=[bad])


def test_a_trusted_network_with_host_bits_is_refused_not_widened() -> None:
    """10.0.0.1/8 trusted all of 10.0.0.0/8 without a word: whoever is trusted can name
    any client IP, so a typo must not widen it."""
    with pytest.raises(AuditConfigurationError, match="host bits set: write the network "
                       "10.0.0.0/8 to trust all of it, or 10.0.0.1 alone"):
        AuditMiddleware(Starlette(), trusted_proxies=["10.0.0.1/8"])
    assert AuditMiddleware(Starlette(), trusted_proxies=["2001:0db8::/32"])


def test_unix_is_a_trusted_proxy_entry_of_its_own() -> None:
    from audit_middleware.client_ip import TrustedProxies

    proxies = TrustedProxies(["10.0.0.0/8", " UNIX "])
    assert proxies.unix and repr(proxies) == "TrustedProxies(['10.0.0.0/8', 'unix'])"
    assert TrustedProxies(["unix"]) and not TrustedProxies(["10.0.0.1"]).unix
    with pytest.raises(AuditConfigurationError, match="nor 'unix'"):
        TrustedProxies(["unix:/run/app.sock"])


def test_trusted_proxies_may_be_ipaddress_objects() -> None:
    import ipaddress

    middleware = AuditMiddleware(Starlette(), trusted_proxies=[
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_address("192.0.2.7")])
    assert [str(n) for n in middleware.config.trusted_proxies.networks] == [
        "10.0.0.0/8", "192.0.2.7/32"]


@pytest.mark.parametrize("bad", [5, object()])
def test_trusted_proxies_that_are_no_list_are_refused(bad: object) -> None:
    with pytest.raises(AuditConfigurationError, match="must be a list of IPs"):
        AuditMiddleware(Starlette(), trusted_proxies=bad)  # type: ignore[arg-type]


def test_trusted_proxies_in_bytes_are_refused_as_bytes() -> None:
    """Iterated, bytes gave ints: "trusted proxy 49 is not an IP address"."""
    with pytest.raises(AuditConfigurationError, match="must be text, not bytes"):
        AuditMiddleware(Starlette(), trusted_proxies=b"10.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(("network", "version"), [("0.0.0.0/0", 4), ("::/0", 6)])
def test_trusting_every_address_is_warned_about(caplog: pytest.LogCaptureFixture,
                                                network: str, version: int) -> None:
    AuditMiddleware(Starlette(), trusted_proxies=[network])
    # ::/0 trusts IPv6 peers only (docs/record.md): the warning must not say "every address"
    assert f"trusted proxy {network} trusts every IPv{version} address" in caplog.text


@pytest.mark.parametrize(("name", "headers"), [
    ("X-Forwarded-For", {"X-Forwarded-For": "198.51.100.7"}),
    ("Forwarded", {"Forwarded": "for=198.51.100.7"})])
def test_the_forwarded_header_is_named_in_any_letters(
        name: str, headers: dict[str, str], events: list[AuditEvent]) -> None:
    """Header names are case-insensitive; its usual spelling was refused."""
    event = request_from("10.0.0.5", headers, events, trusted_proxies=PROXY,
                         forwarded_header=name)
    assert (event.client_ip, event.peer_ip) == ("198.51.100.7", "10.0.0.5")


def test_unknown_forwarded_header_name_is_refused() -> None:
    with pytest.raises(AuditConfigurationError, match="forwarded_header"):
        AuditMiddleware(Starlette(), forwarded_header="x-real-ip")  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{}, {"trusted_proxies": ["0.0.0.0/0"]},
                                     {"principal": lambda ctx: "u-1"}],
                         ids=["plain", "through a trusted proxy", "with a resolver"])
def test_a_peer_that_is_no_address_is_capped_so_the_collector_keeps_the_event(
        options: dict[str, object], events: list[AuditEvent]) -> None:
    """uvicorn --proxy-headers copies a client's X-Forwarded-For text into
    scope["client"]: a 200-character "address" was capped at max_field_length (1024),
    and the collector refuses a client_ip over 64 characters, so the event was lost."""
    from collector.validation import Validator

    peer = "x" * 200
    event = request_from(peer, {"X-Forwarded-For": "y" * 300}, events, **options)
    assert len(event.client_ip) <= 64 and event.client_ip.endswith("…[truncated]")
    assert len(event.peer_ip) <= 64
    assert not isinstance(Validator(from_clients=True).parse(event.to_json_line()), str)
