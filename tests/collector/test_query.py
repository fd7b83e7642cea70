"""Queries: every filter, the time forms, cursor paging that stays stable while events
arrive, streaming, lookup by id, and the same answers from every kind of chunk."""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware.event import format_created
from collector.query import (
    KEEP_READERS,
    Filters,
    QueryError,
    close_readers,
    cursor_after,
    find,
    follow_cursor,
    iter_records,
    reindex,
    search,
)
from collector.store import Store
from tests.collector.storage_helpers import (
    BASE_NS,
    descriptors_into,
    event,
    open_store,
    wait_until,
)

HOUR = 3600 * 10**9


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[dict]]]:
    """A store holding a known mix of events over 48 hours, in several segments."""
    data = tmp_path_factory.mktemp("query")
    rows = []
    kinds = [("run_launched", "alice", "org-a", "ws-1", "10.1.2.3"),
             ("run_completed", "bob", "org-a", "ws-2", "10.1.200.9"),
             ("credentials_created", "alice", "org-b", "ws-3", "192.168.0.5"),
             ("user_sign_in", "carol", "org-b", "ws-3", "2001:db8::17"),
             ("pipeline_created", "system", "org-c", "", "")]
    for n in range(200):
        kind, principal, org, ws, ip = kinds[n % len(kinds)]
        rows.append(event(type=kind, principal=principal, org_id=org, workspace_id=ws,
                          client_ip=ip, target=f"t-{n % 7}",
                          created_ns=BASE_NS + n * (48 * HOUR // 200)))
    with open_store(data, max_segment_bytes=16 * 1024) as store:
        for i in range(0, 200, 20):
            store.write(rows[i:i + 20])
        yield store, rows


def matching(rows: list[dict], **want: Any) -> list[str]:
    return [r["id"] for r in rows if all(r[k] == v for k, v in want.items())]


def everything(store: Store, **filters: Any) -> list[str]:
    return ids(list(iter_records(store, Filters(**filters))))


# -- filters --------------------------------------------------------------------------------
@pytest.mark.parametrize("filters, expected", [
    ({"principal": "alice"}, {"principal": "alice"}),
    ({"target": "t-3"}, {"target": "t-3"}),
    ({"org": "org-b"}, {"org_id": "org-b"}),
    ({"workspace": "ws-3"}, {"workspace_id": "ws-3"}),
    ({"types": ("user_sign_in",)}, {"type": "user_sign_in"}),
    ({"principal": "alice", "org": "org-a"}, {"principal": "alice", "org_id": "org-a"}),
    ({"principal": "nobody"}, {"principal": "nobody"}),
])
def test_each_filter_selects_exactly_the_matching_events(
        corpus: tuple[Store, list], filters: dict, expected: dict) -> None:
    store, rows = corpus
    assert everything(store, **filters) == matching(rows, **expected)


def test_types_are_exact_names_or_globs_ored_together(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    runs = [r["id"] for r in rows if r["type"].startswith("run_") or r["type"] == "user_sign_in"]
    assert everything(store, types=("run_*", "user_sign_in")) == runs
    assert everything(store, types=("no_such_*",)) == []


@pytest.mark.parametrize("cidr, prefix", [
    ("10.1.0.0/16", ("10.1.",)),
    ("10.1.2.3", ("10.1.2.3",)),
    ("10.0.0.0/8", ("10.",)),
    ("2001:db8::/32", ("2001:db8:",)),
    ("2001:db8::17", ("2001:db8::17",)),
    ("192.168.0.0/24", ("192.168.0.",)),
    ("::ffff:10.1.2.3", ("10.1.2.3",)),
])
def test_client_ip_filters_take_an_address_or_a_cidr_block(
        corpus: tuple[Store, list], cidr: str, prefix: tuple[str, ...]) -> None:
    store, rows = corpus
    expected = [r["id"] for r in rows if r["client_ip"].startswith(prefix)]
    assert expected and everything(store, client_ip=cidr) == expected


def test_ipv4_and_ipv6_blocks_match_by_address_not_by_bytes(tmp_path: Path) -> None:
    """An IPv4 client and its IPv4-mapped form are one client; an IPv6 block holds
    them when it holds the mapped block (``::/0`` did not, though its own subnet
    ``::ffff:0:0/96`` did; found by a review); an IPv6 address whose bytes read like an
    IPv4 one is not one."""
    v4 = event(client_ip="10.0.0.1")
    v6 = event(client_ip="a00::1")  # its first bytes read like 10.0.0.0
    mapped = event(client_ip="::ffff:10.0.0.2")
    with open_store(tmp_path) as store:
        store.write([v4, v6, mapped])
        assert everything(store, client_ip="10.0.0.0/8") == [v4["id"], mapped["id"]]
        assert everything(store, client_ip="::ffff:10.0.0.0/104") == [v4["id"], mapped["id"]]
        assert everything(store, client_ip="a00::/16") == [v6["id"]]
        everyone = [v4["id"], v6["id"], mapped["id"]]
        assert everything(store, client_ip="::/0") == everyone
        assert everything(store, client_ip="::/80") == [v4["id"], mapped["id"]]
        assert everything(store, client_ip="0.0.0.0/0") == [v4["id"], mapped["id"]]


def test_a_link_local_client_is_found_by_its_address(tmp_path: Path) -> None:
    """fe80::1%eth0 keeps its zone in the record; the index keys the address (the zone
    made it unfindable), and a filter's zone is ignored."""
    scoped = event(client_ip="fe80::1%eth0")
    other = event(client_ip="2001:db8::1")
    with open_store(tmp_path) as store:
        store.write([scoped, other])
        for block in ("fe80::/10", "fe80::1", "fe80::1%eth0"):
            assert everything(store, client_ip=block) == [scoped["id"]], block
        assert search(store, Filters(client_ip="fe80::1")).records[0]["client_ip"] == \
            "fe80::1%eth0"


def test_a_zoned_block_keeps_its_prefix_length(tmp_path: Path) -> None:
    """RFC 4007 writes a zoned block fe80::1%eth0/64: cutting the text at the '%' took
    the '/64' with the zone, and the filter matched the one address fe80::1, not the
    block, without a word."""
    neighbour = event(client_ip="fe80::2%eth0")
    beyond = event(client_ip="fe80:0:0:1::2")
    with open_store(tmp_path) as store:
        store.write([neighbour, beyond])
        for block in ("fe80::1%eth0/64", "fe80::%eth0/64", "fe80::1%25eth0/64"):
            assert everything(store, client_ip=block) == [neighbour["id"]], block


def test_a_leap_second_bound_is_the_moment_after_second_59(tmp_path: Path) -> None:
    """RFC 3339 allows second 60 (2016-12-31T23:59:60Z); it was refused as "not RFC
    3339". Unix time has no leap seconds: the bound is the moment after second 59."""
    last = event(created="2016-12-31T23:59:59.999999Z")
    first = event(created="2017-01-01T00:00:00.000000Z")
    with open_store(tmp_path) as store:
        store.write([last, first])
        for leap in ("2016-12-31T23:59:60Z", "2016-12-31T18:59:60-05:00",
                     "2016-12-31-23-59-60"):
            assert everything(store, until=leap) == [last["id"]], leap
            assert everything(store, since=leap) == [first["id"]], leap


def test_a_bound_inside_a_leap_second_is_the_moment_after_it(tmp_path: Path) -> None:
    """23:59:60.5 is inside the leap second, before 00:00:00 of the next day: it was
    taken as 00:00:00.5, and until= kept, since= left out, a record at 00:00:00.2,
    which happened after it."""
    last = event(created="2016-12-31T23:59:59.999999Z")
    after = event(created="2017-01-01T00:00:00.200000Z")
    with open_store(tmp_path) as store:
        store.write([last, after])
        for leap in ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:60,999999999Z",
                     "2016-12-31T18:59:60.5-05:00"):
            assert everything(store, until=leap) == [last["id"]], leap
            assert everything(store, since=leap) == [after["id"]], leap


def test_a_time_bound_between_two_microseconds_is_the_next_one(tmp_path: Path) -> None:
    """Records are timed to the microsecond; a bound with more digits is rounded up
    (it was cut off: until=.1234567 left out a record at .123456, before it)."""
    at = event(created="2026-11-26T00:00:00.123456Z")
    with open_store(tmp_path) as store:
        store.write([at])
        assert everything(store, until="2026-11-26T00:00:00.1234567Z") == [at["id"]]
        assert everything(store, since="2026-11-26T00:00:00.1234561Z") == []
        assert everything(store, since="2026-11-26T00:00:00.1234560Z") == [at["id"]]


def test_time_ranges_accept_rfc3339_and_the_seed_form(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    since_ns, until_ns = BASE_NS + 10 * HOUR, BASE_NS + 20 * HOUR
    expected = [r["id"] for r in rows
                if format_created(since_ns) <= r["created"] < format_created(until_ns)]
    rfc = Filters(since=format_created(since_ns), until=format_created(until_ns))
    seed = Filters(since=_seed(since_ns), until=_seed(until_ns))
    offset = Filters(since=_with_offset(since_ns), until=_with_offset(until_ns))
    assert expected
    for filters in (rfc, seed, offset):
        assert ids(list(iter_records(store, filters))) == expected


def test_relative_times_count_back_from_now(tmp_path: Path) -> None:
    now = time.time_ns()
    old = event(created_ns=now - 30 * HOUR)
    recent = event(created_ns=now - 2 * HOUR)
    newest = event(created_ns=now - 60 * 10**9)
    with open_store(tmp_path) as store:
        store.write([old, recent, newest])
        assert everything(store, since="24h") == [recent["id"], newest["id"]]
        assert everything(store, since="15m") == [newest["id"]]
        assert everything(store, since="2d", until="3h") == [old["id"]]
        assert everything(store, since="1w") == ids([old, recent, newest])
        # An age from before year 1 is from the beginning (it was a 500 in the API).
        assert everything(store, since="999999999w") == ids([old, recent, newest])
        assert everything(store, until="999999999w") == []


@pytest.mark.parametrize("filters, message", [
    (Filters(since="yesterday"), "RFC 3339"),
    (Filters(until="2026-11-26-25-00-00"), "YYYY-MM-DD-HH-MM-SS"),
    (Filters(since="15 minutes"), "15m, 24h, 7d"),
    (Filters(client_ip="10.0.0.300"), "IP or a CIDR block"),
    (Filters(client_ip="10.0.0.0/33"), "10.0.0.0/8"),
    (Filters(types=("Run Launched",)), "not an event type or a glob"),
    (Filters(principal=42), "principal must be a string"),  # type: ignore[arg-type]
])
def test_bad_filter_values_raise_a_query_error_naming_the_accepted_forms(
        corpus: tuple[Store, list], filters: Filters, message: str) -> None:
    store, _ = corpus
    with pytest.raises(QueryError, match=message):
        search(store, filters)
    assert issubclass(QueryError, ValueError)


@pytest.mark.parametrize("limit", [0, -1, 10_001, "10"])
def test_limit_must_be_in_range(corpus: tuple[Store, list], limit: Any) -> None:
    with pytest.raises(QueryError, match="limit must be an int from 1 to 10000"):
        search(corpus[0], Filters(), limit=limit)


# -- paging ---------------------------------------------------------------------------------
def test_pages_are_newest_first_and_the_cursor_continues_where_a_page_ended(
        corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    seen, cursor = [], None
    while True:
        page = search(store, Filters(org="org-a"), limit=7, cursor=cursor)
        seen += ids(page.records)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(matching(rows, org_id="org-a")))


def test_paging_stays_stable_while_new_events_arrive(tmp_path: Path) -> None:
    first = [event(principal="p") for _ in range(30)]
    with open_store(tmp_path, max_segment_bytes=8192) as store:
        store.write(first)
        page = search(store, Filters(principal="p"), limit=10)
        seen = ids(page.records)
        while page.next_cursor:
            store.write([event(principal="p") for _ in range(5)])  # arrivals during paging
            page = search(store, Filters(principal="p"), limit=10, cursor=page.next_cursor)
            seen += ids(page.records)
    assert seen == list(reversed(ids(first)))  # no repeat, no skip, no newcomer


def test_oldest_first_paging_with_a_follow_cursor_sees_only_new_events(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write([event(principal="p") for _ in range(3)])
        cursor = follow_cursor(store, Filters(principal="p"))
        assert search(store, Filters(principal="p"), cursor=cursor,
                      newest_first=False).records == []
        later = [event(principal="p"), event(principal="q"), event(principal="p")]
        store.write(later)
        page = search(store, Filters(principal="p"), cursor=cursor, newest_first=False)
    assert ids(page.records) == [later[0]["id"], later[2]["id"]]


def test_cursor_after_continues_after_a_given_record(tmp_path: Path) -> None:
    """The forwarder resumes from its checkpointed seq with ``cursor_after``: exactly the
    records after it, oldest first, for any filters the cursor was made with."""
    with open_store(tmp_path) as store:
        written = [event(principal="p" if i % 2 else "q") for i in range(12)]
        store.write(written)
        every = search(store, Filters(), limit=100, newest_first=False).records
        fifth = every[4]["seq"]
        after = search(store, Filters(), cursor=cursor_after(fifth), newest_first=False)
        only_p = search(store, Filters(principal="p"),
                        cursor=cursor_after(fifth, Filters(principal="p")), newest_first=False)
        with pytest.raises(QueryError, match="another query"):
            search(store, Filters(principal="p"), cursor=cursor_after(fifth),
                   newest_first=False)
    assert ids(after.records) == ids(written[5:])
    assert ids(only_p.records) == [e["id"] for e in written[5:] if e["principal"] == "p"]


def test_a_relative_window_is_fixed_when_paging_starts(tmp_path: Path) -> None:
    now = time.time_ns()
    batch = [event(created_ns=now - 50 * 60 * 10**9 + i * 10**9) for i in range(6)]
    with open_store(tmp_path) as store:
        store.write(batch)
        page = search(store, Filters(since="1h"), limit=3, newest_first=False)
        # even if "1h" ago moves past the first events, the cursor keeps the window
        rest = search(store, Filters(since="1h"), limit=3, cursor=page.next_cursor,
                      newest_first=False)
    assert ids(page.records + rest.records) == ids(batch)


def test_a_cursor_edited_by_hand_reads_within_what_its_bounds_say_never_a_500(
        tmp_path: Path) -> None:
    """A cursor carries its time window unsigned: one edited by hand with an open bound
    or a bound past what SQLite holds read as no bound, not a TypeError or overflow."""
    now = time.time_ns()
    batch = [event(created_ns=now - i * 10**9) for i in range(4)]
    with open_store(tmp_path) as store:
        store.write(batch)
        page = search(store, Filters(since="1h"), limit=1, newest_first=False)
        state = orjson.loads(base64.urlsafe_b64decode(page.next_cursor + "==="))
        for a, b in ((None, 5), (2**63 - 1, None), (-(2**63), 2**63 - 1), (None, None)):
            forged = base64.urlsafe_b64encode(
                orjson.dumps({**state, "a": a, "b": b})).decode().rstrip("=")
            rest = search(store, Filters(since="1h"), limit=10, cursor=forged,
                          newest_first=False)
            assert len(rest.records) <= 3  # read, within the bounds given; no error


def test_a_cursor_only_works_for_the_query_that_made_it(corpus: tuple[Store, list]) -> None:
    store, _ = corpus
    cursor = search(store, Filters(org="org-a"), limit=2).next_cursor
    with pytest.raises(QueryError, match="belongs to another query"):
        search(store, Filters(org="org-b"), cursor=cursor)
    with pytest.raises(QueryError, match="belongs to another query"):
        search(store, Filters(org="org-a"), cursor=cursor, newest_first=False)
    # well-formed JSON without a fingerprint (or with one of another type): a QueryError
    # (400, exit 2), not a KeyError (500, a traceback)
    shapes = [{"v": 1, "s": 5, "a": None, "b": None},
              {"v": 1, "s": 5, "a": None, "b": None, "f": 7}, [1, 2]]
    forged = [base64.urlsafe_b64encode(orjson.dumps(x)).decode() for x in shapes]
    for garbage in ("nonsense", "eyJ2IjoyfQ", "x" * 600, *forged):
        with pytest.raises(QueryError, match="next_cursor unchanged"):
            search(store, Filters(org="org-a"), cursor=garbage)


def test_iter_records_streams_the_whole_selection(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    streamed = list(iter_records(store, Filters(), page_size=13))
    assert ids(streamed) == ids(rows)
    assert [r["seq"] for r in streamed] == list(range(1, 201))


def test_a_record_is_returned_whole(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    [record] = search(store, Filters(target="t-0"), limit=1, newest_first=False).records
    assert {k: record[k] for k in rows[0]} == rows[0]
    assert record["seq"] == 1 and record["source"] == "" and record["source_seq"] == 0


def test_find_returns_the_record_of_an_event_id(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    assert find(store, rows[57]["id"])["seq"] == 58  # type: ignore[index]
    assert find(store, "00000000-0000-7000-8000-000000000000") is None
    assert find(store, rows[57]["id"].upper())["seq"] == 58  # type: ignore[index]


def test_search_takes_a_data_directory_or_its_index_file(corpus: tuple[Store, list]) -> None:
    store, rows = corpus
    data_dir = store.settings.data_dir
    for where in (data_dir, str(data_dir), data_dir / "index.sqlite"):
        assert ids(search(where, Filters(principal="carol"), limit=500,
                          newest_first=False).records) == matching(rows, principal="carol")


def test_a_directory_without_an_index_is_a_query_error(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no index.sqlite"):
        search(tmp_path, Filters())


# -- every kind of chunk answers the same -----------------------------------------------------
def test_open_closed_and_indexed_chunks_give_the_same_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.group_commit.CHUNK_ROWS", 25)
    monkeypatch.setattr("collector.storage.recovery.CHUNK_ROWS", 25)
    rows = [event(principal=f"p{n % 3}", client_ip=f"10.0.{n % 4}.1",
                  created_ns=BASE_NS + n * HOUR) for n in range(120)]
    with open_store(tmp_path) as store:
        for i in range(0, 120, 10):
            store.write(rows[i:i + 10])
        store._indexer.wait(most=0, timeout=10)
        live = _answers(store)
    reindex(tmp_path)  # every chunk closed and indexed
    assert _answers(tmp_path) == live
    assert live[0] == matching(rows, principal="p1")


def _answers(where: Store | Path) -> list[list[str]]:
    queries = [Filters(principal="p1"), Filters(client_ip="10.0.2.0/24"),
               Filters(since=format_created(BASE_NS + 30 * HOUR),
                       until=format_created(BASE_NS + 90 * HOUR)),
               Filters(principal="p2", since=format_created(BASE_NS + 50 * HOUR))]
    return [ids(list(iter_records(where, q, page_size=7))) for q in queries]


def _seed(ns: int) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(ns // 10**9))


def _with_offset(ns: int) -> str:
    t = time.gmtime(ns // 10**9 + 3600)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ns // 1000 % 10**6:06d}+01:00"


def test_a_long_lived_reader_lets_go_of_segments_retention_deleted(tmp_path: Path) -> None:
    """tail -f and the forwarder read through one cached reader for hours: files that
    compression or retention deleted were kept open (up to 16), their disk space out of
    reach of retention_bytes."""
    def deleted_segments_open() -> list[str]:
        return [link for link in descriptors_into(tmp_path)
                if "segment-" in link and "(deleted)" in link]

    with open_store(tmp_path, max_segment_bytes=4096, compress_sealed=True,
                    retention_bytes=20_000) as store:
        cursor = follow_cursor(store.settings.data_dir, Filters())
        for i in range(300):
            store.write([event(created_ns=time.time_ns(), target="x" * 200)])
            page = search(store, Filters(), limit=500, cursor=cursor, newest_first=False)
            if page.records:
                cursor = page.next_cursor or cursor_after(page.records[-1]["seq"])
        wait_until(lambda: store.stats()["retention_deleted"] > 10)
        search(store, Filters(), limit=1, cursor=cursor, newest_first=False)  # a poll
        assert deleted_segments_open() == []


def _closed_store(data_dir: Path, count: int) -> Path:
    with open_store(data_dir) as store:
        store.write([event() for _ in range(count)])
    return data_dir


def test_a_thread_that_searched_leaves_nothing_open_once_it_ends(tmp_path: Path) -> None:
    """``search`` keeps a Reader on the calling thread. Once the thread ended, the
    garbage collector closed its SQLite connection but never its segment files (plain
    descriptors): each thread that ever searched held up to 16 of them for good."""
    data = _closed_store(tmp_path / "data", 3)
    found: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: found.extend(search(data, Filters()).records))
    worker.start()
    worker.join()
    assert len(found) == 3
    assert descriptors_into(data) == []


def test_a_thread_keeps_readers_open_for_its_latest_data_directories_only(
        tmp_path: Path) -> None:
    """One Reader a data directory, kept for good, for every directory a thread ever
    searched: a test run's main thread held ~6 descriptors per test's store."""
    dirs = [_closed_store(tmp_path / f"data-{n}", 1) for n in range(KEEP_READERS + 2)]
    for data in dirs:
        assert len(search(data, Filters()).records) == 1
    assert [d for d in dirs if descriptors_into(d)] == dirs[-KEEP_READERS:]
    close_readers(dirs[-1])
    assert [d for d in dirs if descriptors_into(d)] == dirs[-KEEP_READERS:-1]
    close_readers()
    assert [d for d in dirs if descriptors_into(d)] == []


def test_a_value_longer_than_the_default_field_cap_can_be_found(tmp_path: Path) -> None:
    """A collector may take fields longer than the default 4,096 characters
    (max_field_length); filters refused values over 4,096, so such a record could never
    be found by them. A filter takes whatever a stored line can hold."""
    from collector.storage.filters import MAX_TEXT
    from collector.validation import MAX_LINE_BYTES

    long_name = "p" * 10_000
    with open_store(tmp_path) as store:
        store.write([event(1), event(2, principal=long_name), event(3)])
        found = search(store, Filters(principal=long_name)).records
    assert [r["principal"] for r in found] == [long_name]
    assert MAX_TEXT == MAX_LINE_BYTES


@pytest.mark.parametrize("field", ["org_name", "workspace_name", "status", "principal"])
def test_a_filter_value_longer_than_any_stored_line_is_refused(tmp_path: Path,
                                                               field: str) -> None:
    """(Over HTTP and on a command line such a value cannot even be sent: the URL or the
    argument list is too long first.)"""
    from collector.storage.filters import MAX_TEXT

    with open_store(tmp_path) as store:
        store.write([event(1)])
        with pytest.raises(QueryError, match=f"{field} is {MAX_TEXT + 1} characters long: "
                                             f"give at most {MAX_TEXT}"):
            search(store, Filters(**{field: "x" * (MAX_TEXT + 1)}))


def test_a_type_glob_matching_more_types_than_sqlite_takes_parameters(tmp_path: Path) -> None:
    """A glob becomes the stored types it matches, one SQL parameter each: past SQLite's
    32,766 the query failed ("too many SQL variables"). An app that made types per user
    gets there. Past a few hundred they go as one JSON array."""
    import sqlite3

    with open_store(tmp_path) as store:
        store.write([event(1, type="gen_1_made"), event(2, type="other_kind"),
                     event(3, type="gen_2_made")])
    con = sqlite3.connect(tmp_path / "index.sqlite")
    most = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 32,766 by default
    con.executemany("INSERT INTO types VALUES(?)",
                    [(f"gen_{n}_made",) for n in range(3, most + 10)])
    con.commit()
    con.close()
    found = search(tmp_path, Filters(types=("gen_*",)), newest_first=False).records
    assert [r["type"] for r in found] == ["gen_1_made", "gen_2_made"]


def test_a_segment_indexed_afresh_at_start_is_paged_in_seq_order(tmp_path: Path) -> None:
    """A crash right after a compressed copy was swapped in can lose the index's note of
    it (the index commits without fsync): start-up drops that segment's rows and indexes
    it afresh, its chunks numbered after every later segment's. Pages still follow seq
    order, and a cursor skips nothing."""
    written: list[dict[str, Any]] = []
    with open_store(tmp_path, max_segment_bytes=4096, compress_sealed=True) as store:
        for _ in range(12):
            batch = [event() for _ in range(10)]
            store.write(batch)
            written += batch
        wait_until(lambda: store.stats()["segments"]["compressed"] >= 3)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    with con:  # the state before mark_compressed committed
        segment = con.execute("SELECT min(seq) FROM segments WHERE compressed=1").fetchone()[0]
        con.execute("UPDATE segments SET compressed=0 WHERE seq=?", (segment,))
        con.execute("DELETE FROM gz_blocks WHERE segment=?", (segment,))
    con.close()
    with open_store(tmp_path):
        pass
    con = sqlite3.connect(tmp_path / "index.sqlite")
    by_number = [s for (s,) in con.execute("SELECT segment FROM chunks ORDER BY chunk")]
    con.close()
    assert by_number[-1] == segment and by_number != sorted(by_number)  # the case at hand
    oldest_first = [e["id"] for e in written]
    for newest_first in (False, True):
        found = [r["id"] for r in iter_records(tmp_path, Filters(), page_size=10,
                                               newest_first=newest_first)]
        assert found == (oldest_first[::-1] if newest_first else oldest_first)
