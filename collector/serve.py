"""``audit-collector serve``: open the Store, run the ingest server until SIGTERM or
SIGINT, then drain the connections and close the Store cleanly (a second one stops at
once: ``stop_signals.py``).

The start-up summary lists every option with its source; a line starting with
``audit-collector ready:`` is printed (and flushed) once the sockets accept clients.
The live stats file it writes while serving is ``stats_file.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import resource
import shlex
import sqlite3
import sys
import time
from typing import Any, TextIO, cast

from audit_middleware._counter import worth_saying
from audit_middleware._dirs import make_dirs

from . import installed_version
from .clean_up import CleanUp
from .config import CollectorConfig
from .ingest import IngestServer, IngestSettings
from .integrations import Integrations
from .listen import reload_certificate
from .stats_file import STATS_FILE, StatsFile, _final_stats, _write_stats
from .stop_signals import StopSignals
from .storage.errors import DiskFullError, StorageError
from .storage.in_the_way import SEGMENT_FILE_THEN_START, segment_files_named

log = logging.getLogger("collector")

READY_PREFIX = "audit-collector ready:"


def ingest_settings(config: CollectorConfig) -> IngestSettings:
    address = config.tcp_address
    return IngestSettings(
        socket_path=config.socket_path,
        tcp_host=address[0] if address else None,
        tcp_port=address[1] if address else 0,
        token=config.token,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        max_frame=config.max_frame,
        max_inflight_bytes=config.max_inflight_bytes,
        max_connections=config.max_connections,
        handshake_timeout=config.handshake_timeout,
        idle_timeout=config.idle_timeout,
        read_timeout=config.read_timeout,
        max_field_length=config.max_field_length,
    )


def open_store(config: CollectorConfig) -> tuple[Any, Any]:
    from .store import StorageSettings, Store

    store = Store(StorageSettings(
        data_dir=config.data_dir,
        max_segment_bytes=config.max_segment_bytes,
        max_segment_age=config.max_segment_age,
        compress_sealed=config.compress_sealed,
        retention_days=config.retention_days,
        retention_bytes=config.retention_bytes or None,  # 0: no size limit
        signing_key=config.signing_key,
        digest_interval=config.digest_interval,
        write_stall_timeout=config.write_stall_timeout,
    ))
    # Something else in a segment file's place: what it is and what to do, not only
    # "a FIFO, not a regular file" (the read commands say it so too).
    with segment_files_named(config.data_dir / "segments", SEGMENT_FILE_THEN_START):
        return store, store.open()


#: Seconds between attempts to open the store on a full disk.
OPEN_RETRY = 5.0


def open_when_there_is_space(config: CollectorConfig, signals: StopSignals
                             ) -> tuple[Any, Any] | None:
    """``open_store``, tried again every ``OPEN_RETRY`` seconds while the store cannot
    open for want of disk space (even in its reserve's room: ``Store.open``); None if
    SIGTERM or SIGINT came first. It exited instead, and came back only if someone
    started it again once space was freed: the apps spool meanwhile, but a restart
    policy that gives up (systemd's start limit) left the log down for good."""
    attempts = 0
    while True:
        try:
            opened = open_store(config)
        except DiskFullError as exc:
            attempts += 1
            if worth_saying(attempts):  # at 1, 2, 4, 8, ... attempts
                print(f"audit-collector serve: cannot open the store in "
                      f"{config.data_dir}: {exc}. Waiting for free space (trying again "
                      f"every {OPEN_RETRY:g} s, {attempts} attempt(s) so far): free "
                      f"space on that disk (files other than the store's, or a larger "
                      f"file system); the collector then starts by itself. Nothing "
                      f"acknowledged is lost: apps spool until it is back",
                      file=sys.stderr, flush=True)
            # Polled: the flag is set by a signal handler (stop_signals.py says why).
            deadline = time.monotonic() + OPEN_RETRY
            while not signals.requested and time.monotonic() < deadline:
                time.sleep(0.1)
            if signals.requested:
                return None
            continue
        if attempts:
            log.warning("the store in %s opened after %d attempt(s): disk space was "
                        "freed", config.data_dir, attempts)
        return opened


class StatusOut:
    """Where serve's status lines go. A reader that went away (``serve | consumer`` and
    the consumer exits, a closed stdout) must not stop the collector: a failed write
    raised BrokenPipeError in the middle of a shutdown, which then skipped the draining
    of connections and left the socket behind. After a failure the lines are dropped,
    and the stream is pointed at /dev/null so the interpreter's last flush is quiet."""

    def __init__(self, target: TextIO | None) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._do("write", text)
        return len(text)

    def flush(self) -> None:
        self._do("flush")

    def _do(self, method: str, *args: str) -> None:
        target = self._target
        if target is None:
            return
        try:
            getattr(target, method)(*args)
        except (OSError, ValueError):  # a broken pipe, a closed file
            self._target = None
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, target.fileno())
                os.close(devnull)


def run(config: CollectorConfig, stdout: TextIO | None = sys.stdout) -> int:
    out = cast(TextIO, StatusOut(stdout))  # print() needs write() and flush() only
    # First of all: a signal during start-up (a large store's repair) or the store's
    # close must not take its default action there (stop_signals.py).
    signals = StopSignals()
    signals.install()
    # Raised before the summary: the default connection limits derive from it.
    open_files = raise_open_files_limit()
    print(f"audit-collector serve {installed_version()}: configuration"
          f"{f' (file {config.config_file})' if config.config_file else ''}", file=out)
    for line in config.describe():
        print(line, file=out)
    out.flush()
    print(f"  open files = {open_files}", file=out)
    if config.retention_bytes and config.retention_bytes < config.max_segment_bytes:
        # Retention deletes sealed segments only: the active one comes on top of the cap.
        print(f"audit-collector serve: WARNING: retention_bytes ({config.retention_bytes}) "
              f"is below max_segment_bytes ({config.max_segment_bytes}): the active segment "
              f"alone can outgrow it, and retention never deletes the active segment",
              file=out)
    if config.data_dir.exists() and not config.data_dir.is_dir():
        print(f"audit-collector serve: data_dir {config.data_dir} exists and is not a "
              f"directory: give the collector a directory of its own", file=sys.stderr)
        return 2
    make_dirs(config.data_dir, 0o750)
    try:
        opened = open_when_there_is_space(config, signals)
    except (StorageError, OSError, sqlite3.Error) as exc:
        print(f"audit-collector serve: cannot open the store in {config.data_dir}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    if opened is None:
        print("audit-collector: stopped before the store could open (its disk still "
              "full)", file=out, flush=True)
        return 0
    store, report = opened
    print(f"audit-collector: store opened in {config.data_dir}: {report.describe()}",
          file=out, flush=True)
    try:
        if signals.requested:  # asked while the store opened: nothing to serve
            print("audit-collector: stopped before serving (a stop was asked during "
                  "start-up)", file=out, flush=True)
        else:
            asyncio.run(_serve(store, config, out, signals))
    finally:
        store.close()
        print("audit-collector: stopped", file=out, flush=True)
    return 0


#: The open-files limit serve raises its soft limit to, when the hard limit allows.
OPEN_FILES_WANTED = 65_536


def raise_open_files_limit() -> str:
    """Raise the soft limit on open files toward the hard one (as servers do: the soft
    limit is often 1,024). Ingest, the store and the API's sockets share it: the API's
    connection cap is a quarter of it, so with a low limit a flood of connections would
    leave too few files for segments and the index. Returns a line for the summary."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard,
                                                                         OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            return f"{soft} (could not raise it to {wanted}: {exc})"
        return f"{wanted} (raised from {soft})"
    return str(soft)


async def _serve(store: Any, config: CollectorConfig, out: TextIO,
                 signals: StopSignals) -> None:
    server = IngestServer(store, ingest_settings(config))
    stop = asyncio.Event()
    unhandled = signals.serving(asyncio.get_running_loop(), stop)
    first: BaseException | None = None
    try:
        await server.start()
        await _serve_until_stopped(store, config, out, server, stop, signals)
    except BaseException as exc:
        first = exc
        raise
    finally:
        # Every way out, a start-up that failed once the unix socket was bound included
        # (a TCP port taken, a forward checkpoint that cannot be read, a query API that
        # raised): its listeners closed and its socket's file removed if still ours. Left
        # there, the file took apps and probes for a collector that was not running. After
        # a stop's drain there is nothing left to do (``IngestServer.shutdown``).
        cleanup = CleanUp(first)
        try:
            await cleanup.step("ingest's stop", server.shutdown(config.drain_timeout))
        finally:
            unhandled()  # before the loop closes: a signal after it is the store close's
        cleanup.done()


async def _serve_until_stopped(store: Any, config: CollectorConfig, out: TextIO,
                               server: IngestServer, stop: asyncio.Event,
                               signals: StopSignals) -> None:
    # OTLP forwarder, POST /api/v1/events and GET /metrics (collector/integrations.py)
    integrations = Integrations(store, server, config)
    stats_file = StatsFile(config.data_dir / STATS_FILE)
    stats_task: asyncio.Task[None] | None = None
    api = None
    forwarding = True
    first: BaseException | None = None
    # From here on what is started is stopped again on every way out: a start-up that
    # failed half way (the query API's start raising) left the forwarder's thread and
    # the stats task running, and the API too once it listened.
    try:
        integrations.start(out)
        stats_task = asyncio.create_task(_write_stats(
            server, integrations.store_stats, config, integrations, stats_file))
        api = await _start_api(store, config, out)
        if api is not None:
            integrations.attach(api)
        # A hangup (a closed terminal, systemd's reload) ended the collector without its
        # drain and stop checkpoint; now it loads renewed TLS certificates and goes on.
        signals.reload_with(functools.partial(_reload_certificates, server, api, config))
        addresses = server.addresses + ([api.url] if api else [])
        print(f"{READY_PREFIX} {' '.join(addresses)}", file=out, flush=True)
        await stop.wait()
        # First: a probe answered before the API's port closes (a moment later, while
        # ingest drains) must not be told to send more.
        integrations.health.stopping = True
        print("audit-collector: shutting down, draining connections", file=out, flush=True)
        # The API, ingest and the forwarder each wait for their own clients at once, not
        # one after another: in turn, a stop added up their drain timeouts (28 s measured
        # against the example unit's 30). All before the store closes (the caller's
        # next step), so that no read or event is recorded into a store being closed.
        closing = [server.shutdown(config.drain_timeout),
                   asyncio.to_thread(integrations.stop, config.drain_timeout)]
        forwarding = False
        if api is not None:
            closing.append(api.shutdown())
            api = None
        # Each to its end before the first error is raised: raised at once, the others
        # ran on unwaited (a forwarder's stop that raised left the API draining), and
        # asyncio.run cut them short before the store closed.
        ended = await asyncio.gather(*closing, return_exceptions=True)
        failed = [e for e in ended if isinstance(e, BaseException)]
        for also in failed[1:]:  # raised with the first, but not hidden by it
            log.error("the stop also failed: %s", also, exc_info=also)
        if failed:
            raise failed[0]
    except BaseException as exc:
        first = exc
        raise
    finally:
        # Each step whatever the one before did (an API whose stop raised left the
        # forwarder's thread running), none hiding the error that led here.
        cleanup = CleanUp(first)
        if api is not None:
            await cleanup.step("the query API's stop", api.shutdown())
        if stats_task is not None:
            stats_task.cancel()
        if forwarding:
            await cleanup.step("the forwarder's stop", asyncio.to_thread(
                integrations.stop, config.drain_timeout))
        if stats_task is not None:
            try:
                await _final_stats(server, integrations, stats_file, clean=first is None)
            except Exception:  # the last stats must not fail a clean stop
                log.exception("writing the final %s failed", STATS_FILE)
        cleanup.done()


def _reload_certificates(server: IngestServer, api: Any, config: CollectorConfig) -> None:
    """SIGHUP: the TLS certificates and keys read again from their files (a renewal
    without a restart); without TLS, nothing to do but say so."""
    reloaded = False
    if server.tls is not None and config.tls_cert and config.tls_key:
        reload_certificate(server.tls, config.tls_cert, config.tls_key, "ingest")
        reloaded = True
    if api is not None and api.tls_files and api.config.ssl is not None:
        cert, key = api.tls_files
        reload_certificate(api.config.ssl, cert, key, "query API")
        reloaded = True
    if not reloaded:
        log.info("SIGHUP: no TLS certificate to reload; the collector goes on (stop it "
                 "with SIGTERM)")


async def _start_api(store: Any, config: CollectorConfig, out: TextIO) -> Any:
    """The query API and panel (``collector.api``), or None. A port already taken is a
    warning, not a failed start: receiving events must not depend on the read side."""
    from .api.server import ApiError, start_api

    try:
        api = await start_api(store, config)
    except ApiError as exc:
        log.error("query API not started: %s", exc)
        print(f"audit-collector: WARNING: query API and admin panel not started: {exc}",
              file=out, flush=True)
        return None
    if api is not None:
        url, where = api.url, ""
        for everywhere in ("//0.0.0.0:", "//[::]:"):  # no URL anyone can open
            if everywhere in url:
                url, where = url.replace(everywhere, "//<this host>:"), ", on every address"
        # With this data directory, absolute: the hint is pasted from the log, often
        # from another directory (and users add defaults to ./audit-data).
        data_dir = shlex.quote(os.path.abspath(config.data_dir))
        print(f"audit-collector: admin panel at {url}/admin/audit-logs{where} (readers: "
              f"audit-collector users add NAME --root --data-dir {data_dir})",
              file=out, flush=True)
    return api
