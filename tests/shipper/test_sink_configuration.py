"""CollectorSink's configuration, checked at construction: bad URLs and options fail with
what to do, loopback however spelled needs no TLS, a relative unix path is resolved."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from audit_middleware import AuditConfigurationError
from audit_middleware.shipper import CollectorSink
from audit_middleware.shipper.endpoint import is_loopback


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "LocalHost", "127.0.0.2", "::1"])
def test_loopback_however_it_is_spelled_needs_no_tls(host: str) -> None:
    """A host name is not case-sensitive: tcp://LOCALHOST:7100 was taken for a remote
    collector, and the sink refused to start without TLS."""
    assert is_loopback(host)
    url = f"tcp://[{host}]:7100" if ":" in host else f"tcp://{host}:7100"
    CollectorSink(url, token="t", spool_dir=None).close(timeout=1)


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST."])
def test_localhost_with_a_trailing_dot_needs_tls(host: str) -> None:
    """``localhost.`` is not looked up in /etc/hosts (glibc matches no trailing dot
    there) but asked of DNS: whatever address it answers would get the token and the
    events in clear. It was taken for loopback."""
    assert not is_loopback(host)
    with pytest.raises(AuditConfigurationError, match="is not on loopback"):
        CollectorSink(f"tcp://{host}:7100", token="t", spool_dir=None)


@pytest.mark.parametrize(("url", "options", "message"), [
    ("tcp://127.0.0.1:7100", {}, "needs token="),
    ("tcp://collector.internal:7100", {"token": "t"}, "pass tls=True"),
    ("http://collector:80", {}, "is not supported"),
    ("tcp://collector", {"token": "t"}, "needs a host and a port"),
    ("unix://", {}, "needs the socket file's path"),
    ("unix:///", {}, "needs the socket file's path"),
    ("unix:///x\x00.sock", {}, "needs the socket file's path"),
    ("tcp://127.0.0.1: 7100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:+7100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:7_100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:\u0667\u0661\u0660\u0660", {"token": "t"}, "needs a host and a port"),
    ("unix:///x.sock", {"max_queue": 0}, "max_queue must be a positive int"),
    ("unix:///x.sock", {"ack_timeout": 0}, "ack_timeout must be a number of seconds"),
    # Each of these was accepted, then failed when used: at exit the queue was lost
    # (exit_timeout), every batch dropped (connect_timeout NaN), or every request 503'd.
    ("unix:///x.sock", {"exit_timeout": "5"}, "exit_timeout must be a number of seconds"),
    ("unix:///x.sock", {"exit_timeout": float("nan")}, "exit_timeout must be"),
    ("unix:///x.sock", {"connect_timeout": float("nan")}, "connect_timeout must be"),
    ("unix:///x.sock", {"ack_timeout": float("inf")}, "ack_timeout must be"),
    ("unix:///x.sock", {"max_delay": True}, "max_delay must be"),
    ("unix:///x.sock", {"fail_closed_timeout": float("nan")}, "fail_closed_timeout must"),
    ("unix:///x.sock", {"fail_closed": "no"}, "fail_closed must be True or False"),
    ("unix:///x.sock", {"tls": "yes"}, "tls must be True or False"),
    ("unix:///x.sock", {"max_queue": True}, "max_queue must be a positive int"),
    ("tcp://h.example:7100", {"token": "t", "tls": True, "tls_ca": "/nonexistent-ca.pem"},
     "tls_ca='/nonexistent-ca.pem' cannot be used as the CA bundle"),
    # Each failed only at the first connection, with an error that is not a connection
    # failure, and every batch was dropped rather than spooled (a review helper).
    ("tcp://collector..internal:7100", {"token": "t", "tls": True},
     "is not a valid host name"),
    ("tcp://127.0.0.1:7100", {"token": "t\udcff"}, "token must be text that UTF-8 can carry"),
    # Taken as host names: failed only at the first connection ('[::1', an unclosed
    # bracket, was even said to be "not on loopback").
    ("tcp://[::1:7100", {"token": "t"}, "write an IPv6 one in brackets"),
    ("tcp://user@collector.internal:7100", {"token": "t", "tls": True}, "no user@"),
    ("tcp://collector internal:7100", {"token": "t", "tls": True}, "nor a host name"),
    # Ignored: a unix socket has no TLS, and tls_ca is read with tls=True only (the
    # system's CAs, or the context's, were used instead).
    ("unix:///x.sock", {"tls": True}, "is a unix socket, which TLS does not apply to"),
    ("unix:///x.sock", {"tls": ssl.create_default_context()}, "drop tls= and tls_ca="),
    ("unix:///x.sock", {"tls_ca": "/etc/ca.pem"}, "is a unix socket"),
    ("tcp://127.0.0.1:7100", {"token": "t", "tls_ca": "/etc/ca.pem"},
     "tls_ca= is read with tls=True only: pass tls=True as well"),
    ("tcp://h.example:7100", {"token": "t", "tls": ssl.create_default_context(),
                              "tls_ca": "/etc/ca.pem"}, "load the CA into the context"),
    # '' (a variable read with a default of '') was taken as no CA: the system's CAs,
    # where a private CA was meant; a number failed with a bare TypeError from os.fspath.
    ("tcp://h.example:7100", {"token": "t", "tls": True, "tls_ca": ""},
     ("tls_ca='' names no file: pass the path of the PEM file of the CA .* or leave "
      "tls_ca out")),
    ("tcp://h.example:7100", {"token": "t", "tls": True, "tls_ca": " "}, "names no file"),
    ("unix:///x.sock", {"tls_ca": ""}, "tls_ca='' names no file"),
    ("tcp://h.example:7100", {"token": "t", "tls": True, "tls_ca": 5},
     "tls_ca must be the path .* of a PEM file of CA certificates, or None .*; got 5"),
    # Read with its file's newline, it never matched the collector's (whose token file is
    # read stripped): every connection refused as unauthorized, as a wrong token is.
    ("tcp://127.0.0.1:7100", {"token": "s3cret\n"}, "token has surrounding whitespace"),
    ("tcp://127.0.0.1:7100", {"token": " s3cret"}, "token=open.path..read...strip"),
    ("tcp://127.0.0.1:7100", {"token": "s3\x00cret"}, "or a control character"),
    ("tcp://127.0.0.1:7100", {"token": "  "}, "token has surrounding whitespace"),
    # '' spooled into the working directory; the others failed with a bare TypeError.
    ("unix:///x.sock", {"spool_dir": ""}, "spool_dir must be a directory's path"),
    ("unix:///x.sock", {"spool_dir": b"/tmp/spool"}, "spool_dir must be a directory's path"),
    ("unix:///x.sock", {"spool_dir": False}, "spool_dir must be a directory's path"),
    ("unix:///x.sock", {"spool_dir": 0}, "spool_dir must be a directory's path"),
    ("unix:///x.sock", {"spool_dir": "  "}, "spool_dir must be a directory's path"),
])
def test_bad_configuration_fails_at_construction(url: str, options: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(AuditConfigurationError, match=message):
        CollectorSink(url, **options)


def test_a_relative_unix_path_is_resolved_at_construction(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    sink = CollectorSink(spool_dir=None)
    assert str(sink.endpoint) == f"unix://{tmp_path}/audit-data/collector.sock"
    sink.close()


@pytest.mark.parametrize("url", ["unix:/run/audit/collector.sock",
                                 "unix:///run/audit/collector.sock"])
def test_the_ready_lines_unix_form_is_taken_too(url: str) -> None:
    """The collector's ready line says ``unix:/run/audit/collector.sock`` (gunicorn's
    ``--bind`` form); copied into the sink's URL it was refused as not supported."""
    sink = CollectorSink(url, spool_dir=None)
    assert str(sink.endpoint) == "unix:///run/audit/collector.sock"
    sink.close()


def test_the_ready_lines_relative_unix_form_is_taken_and_resolved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``audit-collector serve`` with its default data directory says ``unix:audit-data/
    collector.sock`` in its ready line: copied into the sink's URL, it was refused as not
    supported, as ``unix:/path`` was."""
    monkeypatch.chdir(tmp_path)
    sink = CollectorSink("unix:audit-data/collector.sock", spool_dir=None)
    assert str(sink.endpoint) == f"unix://{tmp_path}/audit-data/collector.sock"
    sink.close()


@pytest.mark.parametrize("url", ["unix:////run/audit/collector.sock",
                                 "unix://///run/audit/collector.sock"])
def test_a_socket_path_with_extra_leading_slashes_is_the_same_collector(url: str) -> None:
    """``f"unix:///{path}"`` with an absolute ``path`` names the same socket, but kept
    its ``//`` (POSIX leaves it to the system): another identity, so the batches one
    spelling spooled were left unreplayed by a sink spelling it the other way."""
    sink = CollectorSink(url, spool_dir=None)
    assert sink.endpoint.identity == "unix:///run/audit/collector.sock"
    sink.close()


@pytest.mark.parametrize("url", ["unix:/", "unix:", "unix:/run/audit/"])
def test_a_unix_url_without_a_socket_path_is_refused_as_written(url: str) -> None:
    """``unix:/`` was refused as ``'unix:///'``, a URL the user had not written."""
    with pytest.raises(AuditConfigurationError,
                       match=f"collector url '{url}' needs the socket file's path"):
        CollectorSink(url, spool_dir=None)
