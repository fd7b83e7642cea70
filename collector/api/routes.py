"""The endpoints. Every audit-log endpoint authenticates first (so a caller without a
root token learns nothing, not even whether its parameters were valid), reads, records
the read durably, and only then answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import time
from typing import Any, Final, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from audit_middleware.event import format_created
from audit_middleware.wire import MAX_SEQ
from collector import losses, metrics
from collector.disk_calls import DiskCalls, DiskLate
from collector.query import Page, Reader
from collector.single_flight import Unanswered
from collector.storage import loss_acks
from collector.storage.conditions import FOREVER
from collector.storage.time_limit import interruptible
from collector.store_acknowledging import ACK_WAIT, LossAckError, UnknownSourceError

from ..own_records import AUDIT_LOG_EXPORTED, AUDIT_LOG_VIEWED, AUDIT_LOSS_ACKNOWLEDGED
from . import exports
from .auth import (
    CROSS_SITE_MESSAGE,
    SESSION_COOKIE,
    AuthError,
    invalid_token,
    own_page,
)
from .context import STATIC_DIR, Api
from .openapi import SPEC
from .params import MAX_LIMIT, ParamError, Selection, selection
from .reads import CATALOGUE, MAX_STATUS, SELECTION_TARGET, status_text

_EVENT_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_SIGN_IN_BODY: Final = 4096
#: What a read's record adds to its selection, at its longest (a window bound is at
#: most a FOREVER bound's length, year -144169), so that a selection whose first page
#: is accepted is on every later page too.
_LONGEST_BOUND: Final = max((format_created(us * 1000) for us in FOREVER), key=len)
_PAGE_EXTRAS: Final = {"limit": MAX_LIMIT, "returned": MAX_LIMIT, "cursor": True,
                       "window": [_LONGEST_BOUND, _LONGEST_BOUND]}
_EXPORT_EXTRAS: Final = {"format": max(exports.MEDIA_TYPES, key=len)}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


# -- audit logs --------------------------------------------------------------------------
async def list_audit_logs(request: Request) -> Response:
    api = _api(request)
    reader = await api.root_reader(request)
    sel = selection(request.query_params, paging=True)
    _check_recordable(sel, _PAGE_EXTRAS)

    def work(r: Reader) -> Page:
        return r.search(sel.filters, limit=sel.limit, cursor=sel.cursor,
                        newest_first=sel.newest_first)

    page = await api.pool.run(work)
    details = sel.describe() | {"limit": sel.limit, "returned": len(page.records)}
    if sel.cursor:
        details["cursor"] = True
        details["window"] = _shown_window(page.window)
    await api.record(AUDIT_LOG_VIEWED, reader, request, SELECTION_TARGET, details)
    return json_response({"records": page.records, "next_cursor": page.next_cursor,
                          "limit": sel.limit})


def _check_recordable(sel: Selection, extras: dict[str, Any]) -> None:
    """Refuse a selection its read's record could not hold whole. ``status`` is cut at
    MAX_STATUS characters after its keys are sorted: a selection padded with types
    that change nothing (ORed globs) pushed type, until, window and workspace past the
    cut, and the record hid filters that were applied."""
    needed = len(status_text(sel.describe() | extras))
    if needed > MAX_STATUS:
        raise ParamError(f"this selection is too long to be recorded whole with its read "
                         f"({needed} characters, at most {MAX_STATUS}): narrow the "
                         f"selection (fewer types or globs, shorter values)")


def _shown_window(window: tuple[int | None, int | None] | None) -> list[str | None]:
    """A later page's time window, as its record shows it: the cursor's, which its
    filters do not show. Always shown, [null, null] for none: left out, the record of
    a page read in no window (a cursor edited to hold exactly (-2**62, 2**62)) showed
    the query string's since/until instead, which were not applied."""
    bounds = window if window is not None else (None, None)
    return [None if us is None else format_created(us * 1000) for us in bounds]


async def get_audit_log(request: Request) -> Response:
    api = _api(request)
    reader = await api.root_reader(request)
    event_id = request.path_params["event_id"]
    if not _EVENT_ID.fullmatch(event_id):
        raise ParamError(f"{event_id[:40]!r} is not an event id: ids are lowercase UUIDs "
                         f"such as 019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11")
    record = await api.pool.run(lambda r: r.find(event_id))
    await api.record(AUDIT_LOG_VIEWED, reader, request, event_id,
                     {"found": record is not None})
    if record is None:
        return json_response({"error": "not_found",
                              "message": f"no stored event has id {event_id}"}, 404)
    return json_response({"record": record, "trace_url": api.trace_url(record)})


async def export_csv(request: Request) -> Response:
    return await _export(request, "csv")


async def export_jsonl(request: Request) -> Response:
    return await _export(request, "jsonl")


async def export_ocsf(request: Request) -> Response:
    return await _export(request, "ocsf")


async def export_ecs(request: Request) -> Response:
    return await _export(request, "ecs")


async def _export(request: Request, fmt: str) -> Response:
    api = _api(request)
    reader = await api.root_reader(request)
    sel = selection(request.query_params, paging=False)
    _check_recordable(sel, _EXPORT_EXTRAS)
    first = await api.pool.run(lambda r: exports.first_page(r, sel))
    await api.record(AUDIT_LOG_EXPORTED, reader, request, SELECTION_TARGET,
                     sel.describe() | {"format": fmt})
    name = (f"audit-logs-{time.strftime('%Y-%m-%d-%H-%M-%S', time.gmtime())}."
            f"{exports.EXTENSIONS[fmt]}")
    sent = exports.Sent()
    return exports.ExportResponse(
        exports.stream(api.pool, sel, fmt, first, sent), sent, fmt, api.export_cuts,
        media_type=exports.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'})


#: Stored types listed at most, besides the catalogue's (the panel's suggestions). An app
#: may store any number of types, one event each: every one was listed, and 50,000 made
#: a 3 MB answer and a suggestion list that took the panel's type field seconds a
#: keystroke (a million, 64 MB). The type filter takes any type, listed or not.
MAX_LISTED_TYPES: Final = 1000


#: The longest ``prefix`` of ``GET /api/v1/event-types``: a type is 1-64 characters of
#: a-z, 0-9 and "_" (``collector.validation``), so a longer prefix matches none.
MAX_TYPE_PREFIX: Final = 64


def _type_prefix(params: Any) -> str:
    unknown = sorted(set(params.keys()) - {"prefix"})
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}: use prefix")
    prefixes = params.getlist("prefix")
    if len(prefixes) > 1:
        raise ParamError("prefix is given more than once: give it once")
    prefix = prefixes[0] if prefixes else ""
    if len(prefix) > MAX_TYPE_PREFIX:
        raise ParamError(f"prefix is {len(prefix)} characters long: give at most "
                         f"{MAX_TYPE_PREFIX} (no type is longer)")
    return prefix


def _stored_types(prefix: str, reader: Reader) -> list[str]:
    """The first ``MAX_LISTED_TYPES + 1`` stored types beginning with ``prefix``, under the
    query thread's time limit as every other read is (``time_limit``)."""
    with interruptible(reader.con):
        return [t for (t,) in reader.con.execute(
            "SELECT type FROM types WHERE type >= ? AND type < ? ORDER BY type LIMIT ?",
            (prefix, prefix + "{", MAX_LISTED_TYPES + 1))]


async def event_types(request: Request) -> Response:
    """The catalogue's types and the first ``MAX_LISTED_TYPES`` stored ones, of those
    beginning with ``prefix`` if given: a store flooded with types (an app that made one
    per request) hid the real ones after them from the suggestions; the panel asks
    again with what is typed, so a type is suggested once its first characters are."""
    api = _api(request)
    await api.root_reader(request)
    prefix = _type_prefix(request.query_params)
    # The table's primary key is the type: the first ones in order without a sort, and
    # those of a prefix a range of it ("{" sorts right after "z", above every character
    # a type may hold).
    stored = await api.pool.run(functools.partial(_stored_types, prefix))
    catalogue = {t for t in CATALOGUE.types if t.startswith(prefix)}
    return json_response({"types": sorted(set(stored[:MAX_LISTED_TYPES]) | catalogue),
                          "truncated": len(stored) > MAX_LISTED_TYPES})


# -- acknowledged losses -----------------------------------------------------------------
_MAX_ACK_BODY: Final = 4096


class LossKeeper(Protocol):
    def plan_loss_ack(self, source: str | None, through: int | None = None
                      ) -> dict[str, int]: ...

    def stage_loss_ack(self, plan: dict[str, int], *, by: str, reason: str,
                       record: str | None = None) -> Staged | None: ...


class Staged(Protocol):
    def keep(self) -> None: ...

    def drop(self) -> None: ...

    def abandon(self) -> None: ...


async def list_losses(request: Request) -> Response:
    """The sources that lost events, those with losses not yet acknowledged first (the
    panel's "Lost events" tab). Counts and source ids, no audit content: not a read."""
    api = _api(request)
    await api.root_reader(request)
    try:
        # The store's stats read its disk (quarantine/, a statvfs): one reading at a time,
        # shared with /metrics, never the loop's default pool, waited for a bounded time.
        # Fresh: a listing asked after an acknowledgement shows it.
        stats = await api.store_stats.read(metrics.SHARED_WAIT, fresh=True)
    except Unanswered:
        raise DiskLate(LOSSES_LATE) from None
    # The counts cost O(sources), O(ranges) each, without the disk: off the loop, which
    # ingest shares.
    return json_response(await asyncio.to_thread(losses.listing, stats))


LOSSES_LATE: Final = ("the store's figures (the sources' losses) did not come in time: the "
                      "data disk does not answer (a hung disk, a frozen network file "
                      "system); try again once it does")
STAGE_LATE: Final = ("the acknowledgement could not be written beside loss-acks.json in "
                     "time: the data disk does not answer (a hung disk, a frozen network "
                     "file system); nothing was recorded or acknowledged: try again once "
                     "it does")
#: Seconds an acknowledgement waits to be staged: the store's own wait for another one
#: under way (then 503, "try again"), and the disk's usual bounded wait on top.
STAGE_WAIT: Final = ACK_WAIT + metrics.SHARED_WAIT


async def acknowledge_losses(request: Request) -> Response:
    """``{"source": ..., "reason": ..., "through": N}``: the source's losses up to N (or
    all it is known to have numbered) are known to an operator; ``"source"`` left out:
    every source with a loss not yet acknowledged. Recorded before it applies."""
    api = _api(request)
    reader = await api.root_reader(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # A page elsewhere can post a form or text/plain without asking; application/json
        # needs a CORS preflight, which this API never grants.
        raise ParamError("send the body as Content-Type: application/json")
    source, reason, through = _loss_ack_body(await _small_body(
        request, _MAX_ACK_BODY, '{"reason": "...", "source": "...", "through": N}'))
    keeper: LossKeeper = api.store  # type: ignore[assignment]  # serve's Store
    try:
        # O(sources), and O(ranges) each, for every source: off the loop, which ingest
        # shares (as for stats).
        plan = await asyncio.to_thread(keeper.plan_loss_ack, source, through)
    except UnknownSourceError as exc:
        return json_response({"error": "not_found", "message": str(exc)}, 404)
    except LossAckError as exc:
        raise ParamError(str(exc)) from None
    if source is not None:
        details: dict[str, Any] = {"reason": reason, "through": plan[source]}
    else:  # thousands of sources would not fit a record: how many, and the stats say which
        details = {"reason": reason, "sources": len(plan), "through": through or "latest"}
    # Written beside its file first (naming its record), then recorded, then put in
    # place: a full disk fails the first step, before there is a record of an
    # acknowledgement not made; once recorded, it is made, even if the file cannot take
    # its place yet (the store puts it there later: collector.storage.loss_acks).
    record = api.own_record(AUDIT_LOSS_ACKNOWLEDGED, reader, request,
                            source if source is not None else "(all sources)", details)
    staged = await _stage(api.disk, keeper, plan, by=reader.name, reason=reason,
                          record=record["id"])
    if staged is None:  # made already, as asked: a client's retry, recorded the first time
        return json_response({"acknowledged": plan})
    write = asyncio.ensure_future(api.write_record(record))
    try:
        # Shielded: a stop past its drain timeout cancels this request, not the store's
        # commit thread, which may have the record already and write it anyway. Its
        # write decides (``_settle``), never this request's cancellation.
        await asyncio.shield(write)
    except asyncio.CancelledError:
        write.add_done_callback(functools.partial(_settle, staged))
        raise
    except Exception:  # not recorded: not made
        # Off the loop, as keep: dropping may rewrite loss-acks.json (fsynced) for
        # sources retention forgot meanwhile (``Store._release_acks``). Not bounded:
        # the next acknowledgement waits for it anyway (it holds their lock).
        await api.disk.finish(staged.drop)
        raise
    except BaseException:
        staged.drop()
        raise
    # Recorded, so made: waited for however long the disk takes, as the record was.
    await api.disk.finish(staged.keep)
    return json_response({"acknowledged": plan})


async def _stage(disk: DiskCalls, keeper: LossKeeper, plan: dict[str, int], *, by: str,
                 reason: str, record: str) -> Staged | None:
    """``keeper.stage_loss_ack`` on a disk thread, waited for ``STAGE_WAIT`` at most
    (then ``DiskLate``: 503). Either way, a request that stops waiting (cancelled by a
    stop past its drain timeout, or the disk too slow) cannot stop the thread, which
    stages all the same and holds the acknowledgements' lock until the staged file is
    kept or dropped. Nothing else would ever end it: every later acknowledgement
    waited, then was refused, until a restart. Dropped once staged (its record is never
    written)."""
    stage = disk.submit(functools.partial(keeper.stage_loss_ack, plan, by=by, reason=reason,
                                          record=record))
    try:
        return await disk.wait(stage, STAGE_WAIT, STAGE_LATE)
    except (asyncio.CancelledError, DiskLate):
        stage.add_done_callback(functools.partial(_drop_staged, disk))
        raise


def _drop_staged(disk: DiskCalls, stage: concurrent.futures.Future[Staged | None]) -> None:
    if stage.exception() is not None:
        return  # nothing staged (refused): the next start sees to a loop that stopped
    staged = stage.result()
    if staged is not None:
        # On a disk thread: this runs on the staging thread, or on the loop when the
        # staging ended just before.
        disk.submit(staged.drop, limited=False)


def _settle(staged: Staged, write: asyncio.Future[str]) -> None:
    """End an acknowledgement whose request was cancelled as its record's write ends:
    kept if the record was written, dropped if it was refused. A write cancelled too
    (the loop stopping) may have been done by the commit thread all the same: left
    for the next start, which looks for its record in the index. On the loop (a stop's
    cancellation only): on a thread, the keep of a recorded acknowledgement could
    still be under way as the store closed."""
    if write.cancelled():
        staged.abandon()
    elif write.exception() is not None:
        staged.drop()
    else:
        staged.keep()


def _loss_ack_body(body: bytes) -> tuple[str | None, str, int | None]:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict) or set(fields) - {"source", "reason", "through"}:
        raise ParamError('send {"reason": "...", "source": "<source>", "through": N} '
                         '(source and through optional)')
    source, reason, through = fields.get("source"), fields.get("reason"), fields.get("through")
    # Left out means every source (every number): a null is not left out. A client's
    # unset variable (JSON.stringify of a null, Python's None) acknowledged every
    # source's losses at once, the widest acknowledgement there is.
    if "source" in fields and (not isinstance(source, str) or not source):
        raise ParamError("source must be a source id (as `audit-collector stats` lists "
                         "them), or left out for every source")
    if not isinstance(reason, str) or not reason.strip() \
            or len(reason) > loss_acks.MAX_REASON or not reason.isprintable():
        raise ParamError(f"reason: say why the loss is known, in one line of 1 to "
                         f"{loss_acks.MAX_REASON} printable characters")
    if "through" in fields and (type(through) is not int or not 1 <= through <= MAX_SEQ):
        raise ParamError("through must be a source number from 1 to 2**63-1, or left out "
                         "for every number the source is known to have given out")
    return source, reason.strip(), through


async def _small_body(request: Request, limit: int, send: str) -> bytes:
    """The request's body, refused past ``limit`` bytes (``send``: what to send)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ParamError(f"the body is over {limit} bytes: send {send}")
    return body


# -- the panel's session -----------------------------------------------------------------
async def who_am_i(request: Request) -> Response:
    api = _api(request)
    reader = await api.reader(request)
    return json_response({"name": reader.name, "root": reader.root})


async def sign_in(request: Request) -> Response:
    api = _api(request)
    origin = request.headers.get("origin")
    public = api.settings.public_origin  # behind a reverse proxy: what browsers see
    if origin is not None and origin not in (f"{request.url.scheme}://{request.url.netloc}",
                                             public):
        raise AuthError(403, "forbidden", "sign in from the panel's own page (behind a "
                        "reverse proxy, set api_public_url to the URL browsers open)",
                        denied="sign-in from another origin")
    token = await _token_from_body(request)
    reader = await api.token_reader(token)
    if reader is None:
        raise invalid_token()
    reader = api.check_root(reader)
    response = json_response({"name": reader.name, "root": reader.root})
    secure = api.settings.tls or (public or "").startswith("https://")
    response.set_cookie(SESSION_COOKIE, api.sessions.start(reader), path="/", httponly=True,
                        samesite="strict", secure=secure)
    return response


async def _token_from_body(request: Request) -> str:
    body = await _small_body(request, _MAX_SIGN_IN_BODY, '{"token": "..."}')
    try:
        token = orjson.loads(body)["token"]
        if not isinstance(token, str):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ParamError('send the token as JSON: {"token": "ac_..."}') from None
    return token.strip()


async def sign_out(request: Request) -> Response:
    sid = request.cookies.get(SESSION_COOKIE)
    if sid and not own_page(request):
        raise AuthError(403, "forbidden", CROSS_SITE_MESSAGE,
                        denied="sign-out from another site's page")
    if sid:
        _api(request).sessions.end(sid)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- documents ---------------------------------------------------------------------------
_SPEC_BODY: Final = orjson.dumps(SPEC)


async def openapi(request: Request) -> Response:
    return Response(_SPEC_BODY, media_type="application/json")


async def panel(request: Request) -> Response:
    if request.url.query and not own_page(request):
        # The panel runs the selection in its URL as the signed-in reader (and records
        # it as their read): a link from another site must not choose it for them.
        return RedirectResponse("/admin/audit-logs", status_code=303)
    return FileResponse(STATIC_DIR / "panel.html", media_type="text/html; charset=utf-8")


async def to_panel(request: Request) -> Response:
    return RedirectResponse("/admin/audit-logs", status_code=307)
