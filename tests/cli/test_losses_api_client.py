"""``audit-collector losses ack`` against an API that answers what the collector's never
would (a wrong --api-url, a host that is not the collector): the root reader's token
goes nowhere else, and the command ends with a plain message. The real collector's
API: tests/e2e/test_losses_cli.py."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import pytest

from collector import api_client
from collector.cli import main
from tests.e2e.harness import ROOT

TOKEN = "ops-secret-token"
Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


class FakeApi:
    """An HTTP server on loopback answering every request with ``answer``; what it was
    asked is kept (path, Authorization header)."""

    def __init__(self, answer: Answer) -> None:
        self.asked: list[tuple[str, str | None]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                fake.asked.append((self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    answer(self)
                except OSError:  # the client went away: what the tests want at times
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_answer(status: int, body: bytes, **headers: str) -> Answer:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
    return answer


ACKNOWLEDGED = json_answer(200, b'{"acknowledged": {"app-1": 3}}')


def write_token_file(directory: Path, content: str = TOKEN, mode: int = 0o600) -> Path:
    """A reader token file as its owner alone can read it (unless ``mode`` says else)."""
    path = directory / "token"
    path.write_text(content)
    path.chmod(mode)
    return path


def ack(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
        ) -> tuple[int, str, str]:
    monkeypatch.setenv(api_client.TOKEN_ENV, TOKEN)
    code = main(["losses", "ack", "--source", "app-1", "--reason", "known",
                 "--api-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_fake_api_that_acknowledges_is_believed(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake itself: what the tests below change is only its answer."""
    with FakeApi(ACKNOWLEDGED) as api:
        code, out, err = ack(capsys, monkeypatch, api.url)
    assert code == 0, err
    assert "acknowledged the losses of app-1 through 3" in out
    assert api.asked == [("/api/v1/sources/acknowledge-losses", f"Bearer {TOKEN}")]


def test_a_redirect_is_not_followed_with_the_token(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib follows a 302 to any URL, plain http or another host, and sends the
    request's headers along: the root reader's token, to wherever the answer said."""
    with FakeApi(ACKNOWLEDGED) as elsewhere:
        moved = json_answer(302, b"{}", Location=f"{elsewhere.url}/steal")
        with FakeApi(moved) as api:
            code, _, err = ack(capsys, monkeypatch, api.url)
    assert elsewhere.asked == []
    assert code == 2 and "redirected" in err and "--api-url" in err, err


def test_proxies_from_the_environment_are_not_used(tmp_path: Any) -> None:
    """http_proxy (set on many hosts for other tools) had the request, token and all,
    go to the proxy instead, in clear for an API on loopback over plain http."""
    with FakeApi(ACKNOWLEDGED) as api, FakeApi(json_answer(502, b"{}")) as proxy:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AUDIT_") and "proxy" not in k.lower()}
        env.update({api_client.TOKEN_ENV: TOKEN, "http_proxy": proxy.url,
                    "https_proxy": proxy.url})
        done = subprocess.run(
            [sys.executable, "-m", "collector", "losses", "ack", "--source", "app-1",
             "--reason", "known", "--api-url", api.url],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proxy.asked == []
    assert done.returncode == 0, done.stderr
    assert api.asked == [("/api/v1/sources/acknowledge-losses", f"Bearer {TOKEN}")]


@pytest.mark.parametrize("answer", [
    json_answer(400, b'{"message": "\\u001b]0;owned\\u0007\\u001b[2J bad"}'),
    json_answer(200, b'{"acknowledged": {"app-1": "\\u001b[2J"}}'),
])
def test_what_the_api_says_reaches_the_terminal_escaped(
        answer: Answer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeApi(answer) as api:
        code, out, err = ack(capsys, monkeypatch, api.url)
    assert code != 0
    assert "\x1b" not in out + err and "\x07" not in out + err, (out, err)


def test_an_endless_answer_is_not_read_to_its_end(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer was read whole into memory, however large."""
    sent: list[int] = []
    size = 64 * 1024 * 1024

    def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        block = b" " * 65536
        for _ in range(size // len(block)):
            handler.wfile.write(block)
            sent.append(len(block))

    with FakeApi(endless) as api:
        code, _, err = ack(capsys, monkeypatch, api.url)
    assert code == 2 and "over" in err, err
    assert sum(sent) < size // 4  # it stopped reading, and the server could not go on


@contextmanager
def trickling() -> Iterator[FakeApi]:
    """An API that sends its status line a byte at a time, never finishing."""
    stop = threading.Event()

    def slow(handler: http.server.BaseHTTPRequestHandler) -> None:
        while not stop.wait(0.2):
            handler.wfile.write(b"H")
            handler.wfile.flush()

    with FakeApi(slow) as api:
        try:
            yield api
        finally:
            stop.set()


def test_an_answer_that_never_ends_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each byte within the socket's timeout, the command waited for ever."""
    monkeypatch.setattr(api_client, "TIMEOUT", 1.0)
    outcome: list[BaseException | dict[str, Any]] = []

    def call(url: str) -> None:
        try:
            outcome.append(api_client.post_json(api_client.ApiAccess(url, TOKEN), "/x", {}))
        except api_client.ApiClientError as exc:
            outcome.append(exc)

    with trickling() as api:
        worker = threading.Thread(target=call, args=(api.url,), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "still waiting for the answer"
    [error] = outcome
    assert isinstance(error, api_client.ApiClientError) and "within" in str(error)


def test_an_answer_that_is_not_http_is_said_plainly(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client's errors (a bad status line, a body cut short) are not OSErrors:
    they came out as a traceback."""
    def garbage(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    with FakeApi(garbage) as api:
        code, _, err = ack(capsys, monkeypatch, api.url)
    assert code == 2 and "is --api-url the collector's API" in err, err


def test_https_to_an_api_that_serves_plain_http_says_so(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake's failure read "no answer ...: is the collector running?", of a
    collector that answers."""
    with FakeApi(ACKNOWLEDGED) as api:
        code, _, err = ack(capsys, monkeypatch, api.url.replace("http:", "https:"))
    assert code == 2 and "is the collector running" not in err, err
    assert "TLS" in err and "api_tls_cert" in err, err


@pytest.mark.parametrize(("environ", "api_url"), [
    ({"AUDIT_API_LISTEN": "10.9.9.9:8080"}, None),  # serve would refuse it without TLS
    ({"AUDIT_API_LISTEN": "0.0.0.0:8080"}, "http://10.9.9.9:8080"),
    ({"AUDIT_API_LISTEN": "[2001:db8::1]:8080"}, None),
    ({}, "http://collector.example:8080"),
])
def test_the_token_is_never_sent_in_clear_beyond_loopback(
        environ: dict[str, str], api_url: str | None) -> None:
    """serve refuses an API beyond loopback without TLS (reader tokens never in clear);
    the command, which skips serve's checks, derived http:// for such an address, or
    took it as given, and sent a root reader's token over the network in clear."""
    from collector import config as collector_config

    config = collector_config.load(None, environ, for_serve=False)
    with pytest.raises(api_client.ApiClientError, match="in clear"):
        api_client.base_url(config, api_url)


def test_plain_http_on_loopback_and_https_anywhere_are_taken() -> None:
    from collector import config as collector_config

    config = collector_config.load(None, {"AUDIT_API_LISTEN": "0.0.0.0:8080"},
                                   for_serve=False)
    assert api_client.base_url(config, None) == "http://127.0.0.1:8080"
    assert api_client.base_url(config, "http://localhost:8080/") == "http://localhost:8080"
    assert api_client.base_url(config, "http://[::1]:8080") == "http://[::1]:8080"
    assert api_client.base_url(config, "https://collector.example") \
        == "https://collector.example"


@pytest.mark.parametrize("content", [f"{TOKEN}\n# the ops team's token\n",
                                     f"{TOKEN}\r\nX-Other: 1", f"Bearer {TOKEN}"])
def test_a_token_file_that_holds_more_than_a_token_is_refused_without_showing_it(
        content: str, tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second line (a comment) went into the Authorization header: http.client
    refused it with a traceback that printed the header, token and all."""
    token_file = write_token_file(tmp_path, content)
    monkeypatch.delenv(api_client.TOKEN_ENV, raising=False)
    with FakeApi(ACKNOWLEDGED) as api:
        code = main(["losses", "ack", "--source", "app-1", "--reason", "known",
                     "--api-url", api.url, "--reader-token-file", str(token_file)])
    out, err = capsys.readouterr()
    assert code == 2 and "only the token" in err, err
    assert TOKEN not in out + err
    assert api.asked == []


def test_a_token_in_the_environment_that_is_not_one_is_refused_without_showing_it(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(api_client.TOKEN_ENV, f"{TOKEN} {TOKEN}")
    code = main(["losses", "ack", "--source", "app-1", "--reason", "known",
                 "--api-url", "http://127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert code == 2 and api_client.TOKEN_ENV in err and TOKEN not in out + err, err


def test_a_token_file_its_owner_alone_can_read_is_taken(tmp_path: Path) -> None:
    assert api_client.reader_token(write_token_file(tmp_path, f"{TOKEN}\n")) == TOKEN


def test_a_missing_token_file_says_how_to_make_one(tmp_path: Path) -> None:
    """The README's ``--reader-token-file ~/.audit-root-token``, before any such file:
    the message was Python's ENOENT alone, with no word of where a token comes from."""
    path = tmp_path / "audit-root-token"
    with pytest.raises(api_client.ApiClientError) as refused:
        api_client.reader_token(path)
    message = str(refused.value)
    assert f"{path} does not exist" in message
    assert f"(umask 077; audit-collector users add NAME --root > {path})" in message
    assert api_client.TOKEN_ENV in message


def test_the_command_that_makes_a_missing_token_file_can_be_pasted_as_it_is(
        tmp_path: Path) -> None:
    """A path with a space (or a quote) in it made a command that wrote elsewhere, or
    failed, pasted in a shell."""
    import shlex

    path = tmp_path / "audit root's token"
    with pytest.raises(api_client.ApiClientError) as refused:
        api_client.reader_token(path)
    assert f"--root > {shlex.quote(str(path))})" in str(refused.value)


@pytest.mark.parametrize("mode", ["644", "640", "604", "620"])
def test_a_token_file_other_users_can_reach_is_refused_without_showing_it(
        tmp_path: Path, mode: str) -> None:
    """A root reader's token reads the whole audit log: a file other users can read
    (or write) is refused, as ssh refuses such a private key, with how to fix it."""
    path = write_token_file(tmp_path, mode=int(mode, 8))
    with pytest.raises(api_client.ApiClientError) as refused:
        api_client.reader_token(path)
    message = str(refused.value)
    assert f"chmod 600 {path}" in message and f"mode {mode}" in message
    assert TOKEN not in message


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_token_file_that_is_no_regular_file_is_refused_without_waiting(
        tmp_path: Path, kind: str) -> None:
    """A FIFO blocked the command in open() for as long as no one wrote to it (forever,
    for a path given by mistake); a device was read as a token (/dev/zero, without
    end: /dev/null stands for it here)."""
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    else:
        path = Path("/dev/null")
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(api_client.reader_token(path))
        except BaseException as exc:  # noqa: BLE001 - looked at below, in the test
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)  # one left blocked ends with us
    reader.start()
    reader.join(30)
    assert outcome, "the command still waits on the token file"
    [refused] = outcome
    assert isinstance(refused, api_client.ApiClientError), refused
    assert "not a regular file" in str(refused) and "--reader-token-file" in str(refused)


def test_https_to_the_api_verifies_alike_on_every_python() -> None:
    """Python 3.13's default context refuses certificates that break RFC 5280 as
    OpenSSL 3's own commands make them (no authority key identifier): `audit-collector
    losses` worked with such a certificate on 3.11 and failed on 3.13. Strict checks off,
    partial chains (the API's own certificate as the anchor) on, on every Python."""
    context = api_client._tls(api_client.ApiAccess(url="https://127.0.0.1:1", token="t"))
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert not context.verify_flags & ssl.VERIFY_X509_STRICT
