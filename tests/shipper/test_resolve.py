"""Resolving a ``tcp://`` collector's host name within a timeout (``endpoint.resolve``):
getaddrinfo has none of its own, and a resolver that does not answer held the sink's
worker past connect_timeout and the exit deadline. The resolver is mocked here."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from audit_middleware.shipper import endpoint
from tests.e2e.harness import outcome_within

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 7100))]


class Resolver:
    def __init__(self) -> None:
        self.hang = threading.Event()  # set: the next lookups wait for release
        self.release = threading.Event()
        self.calls = 0
        self.error: Exception | None = None
        self.answer: list[Any] = ANSWER

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.hang.is_set():
            self.release.wait(60)
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolver]:
    fake = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    monkeypatch.setattr(endpoint, "_answers", {})
    monkeypatch.setattr(endpoint, "_lookups", {})
    monkeypatch.setattr(endpoint, "_stale_errors", 0)
    yield fake
    fake.release.set()
    finish_lookups()


def finish_lookups() -> None:
    """Let a lookup left waiting end before the next test (it would keep its answer in
    that test's ``_answers``)."""
    for thread in threading.enumerate():
        if thread.name.startswith("audit-resolve:"):
            thread.join(5)


def test_an_answer_in_time_is_returned(resolver: Resolver) -> None:
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER


def test_a_resolver_that_does_not_answer_fails_at_the_timeout(resolver: Resolver) -> None:
    resolver.hang.set()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="resolving collector did not finish"):
        endpoint.resolve("collector", 7100, 0.2)
    with pytest.raises(TimeoutError):  # the attempt after it waits for the same lookup
        endpoint.resolve("collector", 7100, 0.2)
    assert time.monotonic() - started < 1.5
    assert resolver.calls == 1
    resolver.release.set()  # answered at last: kept for the next attempt
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER


def test_the_wait_ends_at_a_deadline_set_while_it_waits(resolver: Resolver) -> None:
    resolver.hang.set()
    deadline: list[float | None] = [None]
    threading.Timer(0.2, lambda: deadline.__setitem__(0, time.monotonic())).start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        endpoint.resolve("collector", 7100, 30.0, lambda: deadline[0])
    assert time.monotonic() - started < 1.0


def test_the_last_answer_is_used_when_the_resolver_stops_answering(
        resolver: Resolver, caplog: pytest.LogCaptureFixture) -> None:
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    resolver.hang.set()
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        assert endpoint.resolve("collector", 7100, 0.1) == ANSWER
        assert endpoint.resolve("collector", 7100, 0.1) == ANSWER
    assert caplog.text.count("did not finish") == 1  # said once, not at each attempt


def test_a_lookup_under_way_gives_way_to_the_last_answer_at_once(resolver: Resolver) -> None:
    """While a lookup hangs, every connection attempt waited for it the whole
    connect_timeout before taking the last answer: each reconnect during a DNS outage
    cost that timeout (batches waited, a fail_closed request could be answered 503 when
    the last address would have worked at once). An attempt that finds the lookup still
    under way now takes the last answer without waiting; the lookup goes on."""
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    resolver.hang.set()
    assert endpoint.resolve("collector", 7100, 0.1) == ANSWER  # starts the lookup that hangs
    assert outcome_within(10, lambda: endpoint.resolve("collector", 7100, 60.0)) == ANSWER
    assert resolver.calls == 2  # the hung lookup is shared, not started again


def test_a_new_lookup_with_a_last_answer_is_waited_for_only_briefly(
        resolver: Resolver) -> None:
    """The first attempt after a lookup ended (answered, or failed once the resolver gave
    up) starts another: with a last answer to fall back on, a resolver that does not
    answer at once is not waited for the whole connect_timeout either."""
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    resolver.hang.set()
    assert outcome_within(10, lambda: endpoint.resolve("collector", 7100, 60.0)) == ANSWER
    assert resolver.calls == 2


def test_the_lookup_left_under_way_refreshes_the_last_answer(resolver: Resolver) -> None:
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    moved = [ANSWER[0][:4] + (("127.0.0.2", 7100),)]
    resolver.hang.set()
    assert endpoint.resolve("collector", 7100, 0.1) == ANSWER  # the last answer, meanwhile
    resolver.answer = moved
    resolver.release.set()  # the lookup left under way answers
    finish_lookups()
    resolver.hang.clear()
    assert endpoint._answers[("collector", 7100)] == moved
    assert endpoint.resolve("collector", 7100, 1.0) == moved


def test_a_quick_answer_is_preferred_to_the_last_one(resolver: Resolver) -> None:
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    moved = [ANSWER[0][:4] + (("127.0.0.2", 7100),)]
    resolver.answer = moved
    assert endpoint.resolve("collector", 7100, 1.0) == moved


def test_a_resolver_error_is_raised_and_no_answer_kept(resolver: Resolver) -> None:
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(socket.gaierror):
        endpoint.resolve("collector", 7100, 1.0)
    assert endpoint._answers == {}


@pytest.mark.parametrize("code", [socket.EAI_AGAIN, socket.EAI_FAIL])
def test_a_resolver_that_fails_for_now_gives_way_to_the_last_answer(
        resolver: Resolver, code: int, caplog: pytest.LogCaptureFixture) -> None:
    """A resolver whose servers are unreachable answers "try again" at once instead of
    hanging: the same outage, and the collector's address did not change for it. The
    error was raised, so every batch was spooled although the last answer worked."""
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    resolver.error = socket.gaierror(code, "Temporary failure in name resolution")
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        for _ in range(3):
            assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    assert resolver.calls == 4  # asked each time: the answer comes back when it can
    said = [r.getMessage() for r in caplog.records if "last resolved to" in r.getMessage()]
    assert len(said) == 2  # at the 1st and 2nd, then the 4th...: not at every attempt
    assert "Temporary failure" in said[0]


def test_a_name_that_no_longer_exists_is_not_answered_from_the_last_answer(
        resolver: Resolver) -> None:
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(socket.gaierror):
        endpoint.resolve("collector", 7100, 1.0)


def test_without_a_thread_the_last_answer_or_the_resolver_itself(
        resolver: Resolver, monkeypatch: pytest.MonkeyPatch) -> None:
    """At interpreter shutdown (atexit, Python 3.12) no thread can be started: the last
    answer then, else the resolver asked directly, as before (a short-lived script's
    first connection is made at exit)."""
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert endpoint.resolve("collector", 7100, 1.0) == ANSWER
    assert resolver.calls == 1
    endpoint._answers[("collector", 7100)] = [ANSWER[0][:4] + (("127.0.0.2", 7100),)]
    assert endpoint.resolve("collector", 7100, 1.0)[0][4] == ("127.0.0.2", 7100)
    assert resolver.calls == 1


def test_an_address_needs_no_lookup_thread(resolver: Resolver,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: asked.append(args) or ANSWER)
    monkeypatch.setattr(threading.Thread, "start", lambda self: pytest.fail("a thread"))
    assert endpoint.resolve("127.0.0.1", 7100, 0.1) == ANSWER
    assert endpoint.resolve("::1", 7100, 0.1) == ANSWER
    assert all(args[-1] == socket.AI_NUMERICHOST for args in asked)  # no resolver asked


#: The scripts' common end: a child forked by ``fork`` resolves the collector's name and
#: hands its outcome to the parent, which prints ``ANSWERED <outcome>``, or ``HUNG`` if the
#: child is still at it after ``seconds``.
RESOLVE_IN_CHILD = r"""
def resolve_in_child(fork, timeout, seconds):
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            outcome = repr(endpoint.resolve("collector", 7100, timeout))
        except BaseException as exc:
            outcome = repr(exc)
        os.write(write_end, outcome.encode()[:500])
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + seconds
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("HUNG")
            sys.exit(0)
        time.sleep(0.05)
    print("ANSWERED", os.read(read_end, 1000).decode())
"""

FORKED_WITHOUT_HOOKS = r"""
import ctypes, os, socket, sys, threading, time
from audit_middleware.shipper import endpoint
from tests.e2e.harness import outcome_within

socket.getaddrinfo = lambda *args, **kwargs: [
    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 7100))]
holding, release = threading.Event(), threading.Event()

def hold():
    with endpoint._lock:  # e.g. starting a lookup's thread at the fork
        holding.set()
        release.wait(30)

threading.Thread(target=hold, daemon=True).start()
assert holding.wait(5)
resolve_in_child(ctypes.PyDLL(None).fork, 0.3, 5)  # the GIL held: no at-fork hook runs
release.set()
"""


def test_a_child_forked_without_the_at_fork_hook_does_not_wait_for_the_parents_lock(
        ) -> None:
    """uWSGI forks its workers in C, without Python's at-fork hooks
    (``batching.forks_without_hooks``), right after loading the app: when the master's
    worker was connecting then (spool files adopted at start), a thread of it held
    ``endpoint._lock`` at the fork, and the worker's first lookup waited for a lock no
    thread of its process would ever release: its sink's worker hung for good, with no
    timeout, as the resolver itself had done before. A real C fork (libc's, through
    ctypes, as uWSGI's), in a fresh interpreter whose only other thread holds the lock:
    forked from pytest's own process, the child could also inherit any lock another
    test's leftover thread held (CI hung on one such), which is not what is tested."""
    from tests.e2e.harness import run_python

    done = run_python(RESOLVE_IN_CHILD + FORKED_WITHOUT_HOOKS, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ANSWERED") and "127.0.0.1" in done.stdout, (
        done.stdout, done.stderr[-2000:])


FORKED_DURING_AN_OUTAGE = r"""
import ctypes, os, socket, sys, threading, time
from audit_middleware.shipper import endpoint

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 7100))]
hang = threading.Event()

def getaddrinfo(*args, **kwargs):
    if hang.is_set():
        threading.Event().wait(60)  # a resolver that does not answer
    return ANSWER

socket.getaddrinfo = getaddrinfo
endpoint.resolve("collector", 7100, 1.0)  # answered: the answer is kept
hang.set()
endpoint.resolve("collector", 7100, 0.1)  # a lookup left hanging in the parent
resolve_in_child(os.fork if sys.argv[1] == "os.fork" else ctypes.PyDLL(None).fork, 60.0, 10)
"""


@pytest.mark.parametrize("fork", ["os.fork", "libc fork"])
def test_a_child_forked_during_an_outage_uses_the_last_answer(fork: str) -> None:
    """A worker forked while its parent's lookup hangs (a pre-fork server started during
    a resolver outage) has no share in that lookup: it starts one of its own, and with
    the parent's last answer to fall back on, does not wait for it the whole timeout
    (it waited the whole connect_timeout, 60 s here). With the at-fork hook and
    without (uWSGI forks in C), in a fresh interpreter (see the test above)."""
    from tests.e2e.harness import run_python

    done = run_python(RESOLVE_IN_CHILD + FORKED_DURING_AN_OUTAGE, fork, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ANSWERED") and "127.0.0.1" in done.stdout, (
        done.stdout, done.stderr[-2000:])
