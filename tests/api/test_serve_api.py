"""`audit-collector serve` serves the query API next to the ingest socket: one process,
one command. Events shipped in are readable through the API; the reads are stored in
the same store; the default address is loopback; a port already taken does not stop
ingest."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import orjson
import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from collector import config as collector_config
from collector.api.queries import REFUSALS
from collector.disk_calls import RETRY_AFTER
from tests.api.served import add_reader, metric, serving
from tests.e2e.harness import CollectorProcess, stored_events

pytestmark = pytest.mark.e2e


def ship(collector: CollectorProcess, spool: Path, *principals: str) -> None:
    sink = CollectorSink(collector.url, spool_dir=spool)
    configure(sink=sink)
    try:
        for principal in principals:
            emit("run_launched", f"run-{principal}", principal=principal, org_id="o1",
                 client_ip="198.51.100.7")
        assert sink.flush(timeout=20)
    finally:
        configure(sink=None)
        reset_configuration()


def test_the_default_api_address_is_loopback() -> None:
    config = collector_config.load(None, {})
    assert config.api_address == ("127.0.0.1", 8080)


def test_the_panel_line_says_how_to_add_a_reader_to_this_data_directory(root: Path) -> None:
    """The hint is pasted as printed: without ``--data-dir``, ``users add`` wrote to
    ``./audit-data`` (or refused, "no such data directory"), not the collector's."""
    with serving(root / "data") as (collector, _url):
        output = "".join(collector.output)
        assert collector.stop() == 0
    assert f"audit-collector users add NAME --root --data-dir {root / 'data'})" in output


def test_serve_answers_api_queries_next_to_ingest(root: Path) -> None:
    data = root / "data"
    token = add_reader(data, "ops", root=True)
    with serving(data) as (collector, url):
        assert "api_listen" in "".join(collector.output)
        assert f"admin panel at {url}/admin/audit-logs" in "".join(collector.output)
        ship(collector, root / "spool", "alice", "bob")
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/v1/audit-logs").status_code == 401
        page = httpx.get(f"{url}/api/v1/audit-logs", params={"type": "run_*"},
                         headers=auth).json()
        assert [r["principal"] for r in page["records"]] == ["bob", "alice"]
        export = httpx.get(f"{url}/api/v1/audit-logs/export.jsonl", headers=auth)
        assert export.status_code == 200 and export.text.count("\n") == 3  # + the read above
        assert collector.stop() == 0
    reads = [r for r in stored_events(data) if r["type"].startswith("audit_log_")]
    assert [(r["type"], r["principal"], r["client_ip"]) for r in reads] == [
        ("audit_log_viewed", "ops", "127.0.0.1"), ("audit_log_exported", "ops", "127.0.0.1")]


def test_serve_ignores_forwarded_headers_for_the_readers_ip(root: Path) -> None:
    data = root / "data"
    token = add_reader(data, "ops", root=True)
    with serving(data) as (_, url):
        httpx.get(f"{url}/api/v1/audit-logs", headers={
            "Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.66",
            "Forwarded": "for=203.0.113.66"})
        page = httpx.get(f"{url}/api/v1/audit-logs", params={"type": "audit_log_viewed"},
                         headers={"Authorization": f"Bearer {token}"}).json()
    assert page["records"][0]["client_ip"] == "127.0.0.1"


def test_a_taken_api_port_is_a_warning_and_ingest_still_runs(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with CollectorProcess(root / "data", "--api-listen", f"127.0.0.1:{port}") as collector:
            output = "".join(collector.output)
            assert "WARNING: query API and admin panel not started" in output
            assert "api_listen" in output and "http://" not in collector.ready_line
            ship(collector, root / "spool", "carol")
            assert collector.stop() == 0
    assert [r["principal"] for r in stored_events(root / "data")] == ["carol"]


def test_a_non_loopback_api_without_tls_is_refused(root: Path) -> None:
    process = CollectorProcess(root / "data", "--api-listen", "0.0.0.0:0")
    with pytest.raises(AssertionError, match="set api_tls_cert and api_tls_key"):
        process.start()
    assert process.proc is not None and process.proc.wait(10) == 2


def test_an_api_on_every_address_is_announced_with_a_url_one_can_open(root: Path) -> None:
    """'admin panel at http://0.0.0.0:8080/...' is no address a browser can open."""
    from tests.certificates import self_signed_certificate

    cert, key = self_signed_certificate(root)
    with serving(root / "data", "--api-listen", "0.0.0.0:0", "--api-tls-cert", str(cert),
                 "--api-tls-key", str(key)) as (collector, _):
        output = "".join(collector.output)
    assert "admin panel at https://<this host>:" in output and "on every address" in output
    assert "//0.0.0.0:" not in output.split("admin panel at", 1)[1].splitlines()[0]


def test_an_empty_api_listen_serves_no_api(root: Path) -> None:
    with CollectorProcess(root / "data", "--api-listen", "") as collector:
        assert "http" not in collector.ready_line


def test_the_api_over_tls_sets_secure_cookies_and_hsts(root: Path) -> None:
    from tests.certificates import self_signed_certificate

    cert, key = self_signed_certificate(root)
    data = root / "data"
    token = add_reader(data, "ops", root=True)
    with serving(data, "--api-tls-cert", str(cert), "--api-tls-key", str(key)) as (_, url):
        assert url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            assert client.get(f"{url}/api/v1/audit-logs").status_code == 401
            signed_in = client.post(f"{url}/api/v1/session", json={"token": token})
            assert signed_in.status_code == 200
            assert "Secure" in signed_in.headers["set-cookie"]
            assert signed_in.headers["strict-transport-security"].startswith("max-age=")


def test_a_proxys_basic_credentials_leave_the_panel_session_working(root: Path) -> None:
    """A reverse proxy with HTTP Basic in front of the panel: the browser sends its
    ``Authorization: Basic`` with every request, and the proxy forwards it. That header
    is the proxy's, no credential of this API: the session cookie decides, and a request
    with the header alone is one without credentials (not a refused token, recorded)."""
    data = root / "data"
    token = add_reader(data, "ops", root=True)
    basic = {"Authorization": "Basic b3BzOnByb3h5LXBhc3N3b3Jk"}  # the proxy's ops:password
    with serving(data) as (collector, url), httpx.Client(base_url=url) as browser:
        assert browser.post("/api/v1/session", json={"token": token},
                            headers=basic).status_code == 200
        assert browser.get("/api/v1/audit-logs", headers=basic).status_code == 200
        assert browser.get("/api/v1/session", headers=basic).json()["name"] == "ops"
        signed_out = httpx.get(f"{url}/api/v1/audit-logs", headers=basic)
        assert signed_out.status_code == 401
        assert "invalid_token" not in signed_out.headers["www-authenticate"]
        assert collector.stop() == 0
    assert [r["type"] for r in stored_events(data) if r["type"].startswith("audit_log_")] \
        == ["audit_log_viewed"]


def test_a_sign_in_abandoned_mid_body_leaves_no_traceback(root: Path) -> None:
    """A client that goes away before its body ends (or is closed by the connection
    guard) is not the collector's failure: logged as one, a stream of such clients would
    fill the log with several KiB of traceback each."""
    data = root / "data"
    add_reader(data, "ops", root=True)
    with serving(data) as (collector, url):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{")
        # A complete request after them: answered, so the three were handled before it.
        assert httpx.post(f"{url}/api/v1/session", json={"token": "nope"}).status_code == 401
    output = "".join(collector.output)  # all of it: the process has stopped
    assert "Traceback" not in output and "failed" not in output, output[-3000:]


def test_a_loss_acknowledged_through_the_api_leaves_the_alerting_metric(root: Path) -> None:
    """The operator's path end to end, on a real collector: a source's lost events show
    in /metrics; a root reader acknowledges them; the metric to alert on drops to 0 (the
    total stays), the acknowledgement is an audit event readable through the API, and
    both outlive a restart."""
    from tests.e2e.harness import RawClient, wait_until, wire_line

    data = root / "data"
    token = add_reader(data, "ops", root=True)
    auth = {"Authorization": f"Bearer {token}"}
    with serving(data) as (collector, url):
        client = RawClient(collector.socket)
        client.hello()
        client.batch(1, [wire_line(1), wire_line(4)], [1, 4])  # numbers 2 and 3 never arrive
        client.close()
        wait_until(lambda: metric(
            url, "audit_collector_store_sources_unacknowledged_gap_events") == 2)
        done = httpx.post(f"{url}/api/v1/sources/acknowledge-losses", headers=auth,
                          json={"source": "test:1:ab", "reason": "a test's own gap"})
        assert done.status_code == 200 and done.json() == {"acknowledged": {"test:1:ab": 4}}
        wait_until(lambda: metric(  # the metrics' snapshot is at most a second old
            url, "audit_collector_store_sources_unacknowledged_gap_events") == 0)
        assert metric(url, "audit_collector_store_sources_gap_events") == 2
    with serving(data) as (collector, url):
        assert metric(url, "audit_collector_store_sources_unacknowledged_gap_events") == 0
        page = httpx.get(f"{url}/api/v1/audit-logs", headers=auth,
                         params={"type": "audit_loss_acknowledged"}).json()
        [record] = page["records"]
        assert (record["principal"], record["target"]) == ("ops", "test:1:ab")


def test_a_query_past_query_timeout_is_answered_503_query_timeout_and_frees_its_thread(
        root: Path) -> None:
    """``query_timeout`` reaches the served API. A microsecond: any page that walks a chunk
    of the index is past it by then (the limit itself: tests/collector/
    test_query_time_limit.py)."""
    data = root / "data"
    token = add_reader(data, "ops", root=True)
    with serving(data, "--query-timeout", "0.000001") as (collector, url):
        assert "query_timeout" in "".join(collector.output)  # the start-up summary
        ship(collector, root / "spool", "alice")
        auth = {"Authorization": f"Bearer {token}"}
        # More than the 4 query threads: each is free again once its query was stopped.
        answers = [httpx.get(f"{url}/api/v1/audit-logs{path}", headers=auth, timeout=30)
                   for path in ["", "/export.csv"] * 3]
        types = httpx.get(f"{url}/api/v1/event-types", headers=auth, timeout=30)
        assert collector.stop() == 0
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == str(RETRY_AFTER)
        body = answer.json()
        assert body["error"] == "query_timeout"
        assert body["message"].startswith(
            "the query ran longer than 1e-06 s (query_timeout) and was stopped: narrow it "
            "with since/until")
    # A query thread (and its connection) takes a query again: answered, or stopped by
    # the same limit (the listing is under it too), not "all 4 query threads busy".
    assert types.status_code == 200 or types.json()["error"] == "query_timeout", types.text
    # Nothing was read, so no read was recorded.
    assert not [r for r in stored_events(data) if r["type"].startswith("audit_log_")]


def late_export_pages(fault: str) -> type[CollectorProcess]:
    """The collector of ``tests.api.late_export_pages``, its exports cut by ``fault``."""
    from tests.api.late_export_pages import FAULT

    class LateExportPagesCollector(CollectorProcess):
        module = "tests.api.late_export_pages"

        def __init__(self, data_dir: Path, *args: str,
                     env: dict[str, str] | None = None) -> None:
            super().__init__(data_dir, *args, env={**(env or {}), FAULT: fault})

    return LateExportPagesCollector


#: Each fault of ``tests.api.late_export_pages``: the reason its cut is counted by, and
#: the query refusal counted with it (None: the pool refused nothing).
CUT_BY_FAULT = {"query_timeout": ("query_timeout", "query_timeout"), "busy": ("busy", "busy"),
                "hung": ("hung", "hung"), "stuck": ("hung", "hung"),
                "index": ("index", None), "segment": ("segment", None),
                "corrupt": ("fault", None)}


def cut_export(root: Path, fault: str, pages_sent: int = 1) -> str:
    """An export cut while its third page is read, by ``fault``, after its first
    ``pages_sent`` pages: it fails as a download (never ends as a short file), and the
    collector goes on (the next export is whole). The collector's output."""
    from tests.api.late_export_pages import PAGE

    data = root / "data"
    token = add_reader(data, "ops", root=True)
    with serving(data, process=late_export_pages(fault)) as (collector, url):
        ship(collector, root / "spool", *[f"user{n}" for n in range(3 * PAGE)])
        received = bytearray()
        with pytest.raises(httpx.HTTPError), httpx.stream(
                "GET", f"{url}/api/v1/audit-logs/export.csv", timeout=30,
                params={"type": "run_launched"},
                headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_bytes():
                received += chunk
        again = httpx.get(f"{url}/api/v1/audit-logs/export.csv", timeout=30,
                          params={"type": "run_launched"},
                          headers={"Authorization": f"Bearer {token}"})
        # Counted once where an operator alerts: the cut by its reason, and the page's
        # query among the refused ones if the pool refused it.
        reason, refused = CUT_BY_FAULT[fault]
        counted = {name: metric(url, f"audit_collector_api_{name}_total") for name in
                   [f"exports_cut_{reason}", "exports_cut", "queries_refused",
                    *(f"queries_refused_{r}" for r in REFUSALS)]}
        assert collector.stop() == 0
    wanted = {f"exports_cut_{reason}": 1, "exports_cut": 1,
              "queries_refused": int(refused is not None)}
    wanted |= {f"queries_refused_{r}": int(r == refused) for r in REFUSALS}
    assert counted == wanted
    # `audit-collector stats` shows the same (the live stats file, written at the stop).
    api = orjson.loads((data / "ingest-stats.json").read_bytes())["api"]
    assert {name: api.get(name, 0) for name in wanted} == wanted
    rows = received.decode().splitlines()
    assert rows[0].startswith("Type,") and len(rows) == 1 + pages_sent * PAGE  # no more
    assert again.status_code == 200 and len(again.text.splitlines()) == 1 + 3 * PAGE
    log = "".join(collector.output)
    assert "ASGI" not in log and "Caught handled exception" not in log, log
    return log


def the_cut_line(log: str, level: str, pages_sent: int = 1) -> str:
    """The one line that says why the export stopped; no traceback."""
    from tests.api.late_export_pages import PAGE

    assert "Traceback" not in log, log
    [line] = [line for line in log.splitlines() if "export" in line and level in line]
    assert (f"{level} collector.api: query API: GET '/api/v1/audit-logs/export.csv' (csv) "
            f"stopped after {pages_sent * PAGE} row(s), ") in line, line
    assert "the download fails" in line, line
    return line


def test_an_export_cut_by_query_timeout_after_its_first_bytes_fails_with_one_warning(
        root: Path) -> None:
    """Past its first bytes an export's status cannot change: it must fail as a download
    (never end as a short file). It did, but the collector logged an internal error, with
    Starlette's traceback and uvicorn's, for what is the limit doing its job."""
    warning = the_cut_line(cut_export(root, "query_timeout"), "WARNING")
    assert "(query_timeout)" in warning and "narrow it with since/until" in warning, warning


def test_an_export_whose_next_page_finds_every_query_thread_busy_fails_with_one_warning(
        root: Path) -> None:
    """Every query thread held (here by reads the disk does not answer) past the wait for
    one: the 503 of a query not yet answered; an export under way ended as an internal
    error with two tracebacks."""
    # The third page is read with the second's rendering: sent, the fourth waits.
    warning = the_cut_line(cut_export(root, "busy", pages_sent=2), "WARNING", pages_sent=2)
    assert "query threads stayed busy for 0.5 s" in warning, warning
    assert "check the data disk" in warning and "download it again" in warning, warning
    assert "nothing was read" not in warning, warning  # the 503's words: not so here


def test_an_export_whose_next_page_finds_the_threads_hung_past_the_limit_says_the_disk(
        root: Path) -> None:
    """Threads in reads past query_timeout (which stops any query whose reads return):
    the disk does not answer. It was told as every thread busy, a warning that sent the
    operator to add query threads, which would hang too."""
    error = the_cut_line(cut_export(root, "hung", pages_sent=2), "ERROR", pages_sent=2)
    assert "the disk under the store does not answer: " in error, error
    assert "of the 4 query threads have been in one read for more than 30.5 s, past " \
           "query_timeout (30 s)" in error, error
    assert "download it again once the disk answers" in error, error
    assert "stayed busy" not in error and "nothing was read" not in error, error


def test_an_export_whose_next_page_hangs_in_its_read_past_the_limit_says_the_disk(
        root: Path) -> None:
    """The next page's own read does not end (a hung disk): past query_timeout and the
    wait for a thread the export is cut and said, the thread left in its read. The
    export waited for it with no bound: the client's download hung until it gave up."""
    error = the_cut_line(cut_export(root, "stuck"), "ERROR")
    assert "its next page waited for its read: the disk under the store does not " \
           "answer: 1 of the 4 query threads have been in one read for more than 1.5 s, " \
           "past query_timeout (1 s)" in error, error
    assert "download it again once the disk answers" in error, error


def test_an_export_that_finds_the_index_unavailable_fails_with_one_error_line(
        root: Path) -> None:
    """The index gone from under an export (a rebuild under way): the data directory's
    state, said as the 503 before the first byte says it (an ERROR, with what to do)."""
    error = the_cut_line(cut_export(root, "index"), "ERROR")
    assert "index.sqlite is not a complete index" in error, error
    assert "audit-collector reindex" in error, error


def test_an_export_that_finds_a_segment_damaged_fails_with_one_error_line(
        root: Path) -> None:
    """A segment that cannot be read is the data directory's state, as the 503 before
    the first byte says it (naming the segment and what to do): it was logged as a
    fault, with a traceback."""
    error = the_cut_line(cut_export(root, "segment"), "ERROR")
    assert "a segment of the store cannot be read: " in error, error
    assert ".jsonl.gz: no block map: run reindex" in error, error
    assert "download it again once the segment is mended" in error, error


def test_an_export_cut_by_an_unexpected_error_logs_one_traceback(root: Path) -> None:
    """A fault (an index damaged on disk, a bug) keeps its traceback, once: the server's
    two (Starlette's, uvicorn's) said nothing more, and "Exception in ASGI application"
    hid which export it was and how far it got."""
    from tests.api.late_export_pages import PAGE

    log = cut_export(root, "corrupt")
    assert log.count("Traceback") == 1, log
    [line] = [line for line in log.splitlines() if "export" in line and "ERROR" in line]
    assert (f"ERROR collector.api: query API: GET '/api/v1/audit-logs/export.csv' (csv) "
            f"failed after {PAGE} row(s), ") in line, line
    assert "sqlite3.DatabaseError: database disk image is malformed" in log, log
