"""CollectorSink over TLS: delivery, and every certificate mistake (trust, expiry, names,
another CA of the same name, plain and TLS ends mixed) named on both ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.shipper import CollectorSink
from tests.certificates import ca_issued_certificate, self_signed_certificate
from tests.shipper.sink_helpers import Collector, SinkFactory, collector_says, emit_many


def tls_sink(collector: Collector, make_sink: SinkFactory, cert: Path, key: Path, *,
             host: str = "127.0.0.1", **options: Any) -> CollectorSink:
    """A sink of the collector started on TCP with TLS (``cert``, ``key``) and the token,
    reached at ``host``."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key)
    return make_sink(url=f"tcp://{host}:{server.server.tcp_port()}", token="s3cret",
                     **options)


def delivers_three(collector: Collector, sink: Any) -> None:
    """Three events emitted reach the collector through ``sink``, acknowledged."""
    ids = emit_many(3)
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 3
    assert collector.ids() == ids


def refused_once(sink: Any, caplog: pytest.LogCaptureFixture) -> str:
    """One event emitted through ``sink`` is not acknowledged: what the shipper said of
    the collector it could not use."""
    with caplog.at_level(logging.WARNING):
        emit_many(1)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    [said] = [r.getMessage() for r in caplog.records
              if r.name == "audit_middleware" and "unavailable" in r.getMessage()]
    return said


def test_tls_with_the_token_delivers(collector: Collector, make_sink: SinkFactory,
                                     root: Path) -> None:
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=cert)
    ids = emit_many(10)
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 10
    assert collector.ids() == ids


def test_tls_refuses_a_collector_it_cannot_verify(collector: Collector,
                                                  make_sink: SinkFactory, root: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key,
                    tls=True)  # no tls_ca: the self-signed certificate is not trusted
    with caplog.at_level(logging.WARNING):
        emit_many(3)
        assert sink.flush(timeout=10)
    assert (sink.stats()["acknowledged"], sink.stats()["spooled"]) == (0, 3)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "pass tls_ca=" in caplog.text  # what to change, not only what failed
    # The collector's side says it too (asyncio's server logged it at debug level only).
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "does not trust the CA that issued this certificate")
    assert collector.running is not None
    assert collector.running.server.stats()["tls_handshake_failures"] >= 1


@pytest.mark.parametrize(("flaws", "host", "shipper_hint", "collector_hint"), [
    pytest.param({"starts_in": -7200, "ends_in": -3600}, "127.0.0.1",
                 "certificate has expired: renew it", "finds this certificate expired",
                 id="expired"),
    pytest.param({"starts_in": 3600, "ends_in": 7200}, "127.0.0.1",
                 "certificate is not valid yet: set this host's clock right",
                 "the alert does not say why", id="not-yet-valid"),
    pytest.param({}, "localhost", "does not hold the name or address used to reach it",
                 "the alert does not say why", id="host-name-mismatch"),
    pytest.param({"address": "127.0.0.2"}, "127.0.0.1",
                 "does not hold the name or address used to reach it",
                 "the alert does not say why", id="ip-address-mismatch"),
    pytest.param({"client_only": True}, "127.0.0.1", "is not one for a TLS server",
                 "not one for a TLS server", id="not-for-a-server"),
])
def test_a_certificate_refused_for_another_reason_than_trust_is_not_a_ca_problem(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture, flaws: dict[str, Any], host: str,
        shipper_hint: str, collector_hint: str) -> None:
    """The CA is given (tls_ca=), the certificate is wrong otherwise: the shipper said
    "not trusted here: pass tls_ca=" whatever the reason, and the collector "give it the
    CA" for a bad_certificate alert (nothing for an expired or unsupported one). Each
    side names what its end can tell now."""
    cert, key = self_signed_certificate(root, **flaws)
    sink = tls_sink(collector, make_sink, cert, key, host=host, tls=True, tls_ca=cert)
    said = refused_once(sink, caplog)
    assert "CERTIFICATE_VERIFY_FAILED" in said and shipper_hint in said, said
    assert "tls_ca" not in said, said
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:", collector_hint)
    assert not collector_says(caplog, "give it the CA", timeout=0)


def test_a_certificate_of_another_ca_of_the_same_name_is_a_ca_problem(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """tls_ca is an older CA of the name that issued the collector's certificate (the CA
    made again): a certificate without an authority key identifier (what OpenSSL's own
    commands make) is matched to it by name, and its signature fails (verify code 7).
    The shipper said a CA setting does not change that, of the one setting that does;
    the collector's decrypt_error alert had no hint."""
    (root / "old").mkdir()
    (root / "new").mkdir()
    old_ca, _, _ = ca_issued_certificate(root / "old")
    _, cert, key = ca_issued_certificate(root / "new", authority_key_identifier=False)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=old_ca)
    said = refused_once(sink, caplog)
    assert "certificate signature failure" in said, said  # the premise: code 7
    assert "that CA did not sign it" in said and "pass tls_ca=" in said, said
    assert "a CA setting does not change" not in said, said
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "not signed by the CA it trusts under its issuer's name")


def test_tls_ca_may_be_the_collectors_own_ca_issued_certificate(
        collector: Collector, make_sink: SinkFactory, root: Path) -> None:
    """tls_ca=<its certificate> (what the hint says) works for a CA-issued one on every
    Python: before, only 3.13 took it as a trust anchor, and 3.11/3.12 refused it."""
    _, cert, key = ca_issued_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=cert)
    delivers_three(collector, sink)


def test_a_certificate_as_openssl_issues_it_is_trusted_on_every_python(
        collector: Collector, make_sink: SinkFactory, root: Path) -> None:
    """A CA-issued certificate without an authority key identifier (what `openssl x509
    -req` makes) was trusted on 3.11/3.12 and refused on 3.13 (its strict RFC 5280
    checks): upgrading Python stopped the shipping. Trusted alike now."""
    ca, cert, key = ca_issued_certificate(root, authority_key_identifier=False)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=ca)
    delivers_three(collector, sink)


def test_a_plain_client_of_a_tls_listener_is_told_to_turn_tls_on(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """It logged only 'the collector closed the connection', an outage to look for."""
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key)
    with caplog.at_level(logging.WARNING):
        emit_many(3)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    assert "pass tls=True" in caplog.text, caplog.text
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "speaking plain TCP to this TLS port")


def test_a_tls_client_of_a_plain_listener_is_named_on_both_ends(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The collector logged "unknown frame type 0: this server speaks protocol version
    1" of a ClientHello, an operator sent looking at versions."""
    cert, _ = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret",
                     tls=True, tls_ca=cert)
    with caplog.at_level(logging.WARNING):
        emit_many(1)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    assert "does not answer in TLS on this port" in caplog.text, caplog.text
    assert collector_says(caplog, "127.0.0.1:", "the client speaks TLS to a port without it")
