"""``audit-collector verify`` and ``audit-collector keys`` (export, list, rotate).

``verify`` exits 0 only when every file is valid, 1 when one is INVALID, 2 when it
cannot verify at all (no data directory, unreadable key file, bad arguments).
"""

from __future__ import annotations

import argparse
import errno
import io
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from collector import config as collector_config
from collector.ownership import denied_words, foreign_owner
from collector.read_arguments import _add_timeout
from collector.storage.errors import StorageError

from .errors import IntegrityError

if TYPE_CHECKING:
    from .keys import PublicKey

# cryptography is imported by the commands that need it, not by every `audit-collector`.


class ProgressBar:
    """``verify [#####.....] 52% 120/230 MB`` on a terminal; a line per 10 % otherwise."""

    def __init__(self, out: TextIO, label: str = "verify", width: int = 30) -> None:
        self.out, self.label, self.width, self.last = out, label, width, -1
        self.tty = out.isatty()

    def update(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        if pct == self.last:
            return
        if self.tty:
            filled = self.width * pct // 100
            self.out.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                           f"{pct:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        elif pct // 10 != self.last // 10:
            self.out.write(f"{self.label}: {pct}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)\n")
        self.last = pct
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.last >= 0:
            self.out.write("\n")
            self.out.flush()


# -- verify --------------------------------------------------------------------------------
def verify_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])
    parser.add_argument("path", nargs="?", type=Path, metavar="PATH",
                        help="data directory (or a copy of one) to verify; default --data-dir")
    parser.add_argument("--public-key", type=Path, metavar="FILE",
                        help="trusted public keys (from `keys export`, kept away from the "
                             "data directory); default: the data directory's own key ring")
    parser.add_argument("--from", dest="since", metavar="TIME",
                        help="only segments written at or after this time (from a "
                             "segment's creation to the next one's; one during which the "
                             "clock went back is in every window; a replayed event's own "
                             "time can be earlier): RFC 3339, YYYY-MM-DD-HH-MM-SS (UTC), or "
                             "an age such as 24h")
    parser.add_argument("--to", dest="until", metavar="TIME",
                        help="only segments written before this time (same forms)")
    parser.add_argument("--anchor", action="append", default=[], metavar="SIGNATURE",
                        help="a digest signature kept out of the key holder's reach; it "
                             "must still be in the chain (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only INVALID files and the summary")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # No limit by default, as query's: the flag is for cron and monitoring scripts.
    _add_timeout(parser, "stop past this long, e.g. 30s or 5m, a read the disk does not "
                 "answer too, with no verdict (exit 2; default: no limit)")


def run_verify(args: argparse.Namespace) -> int:
    from collector.storage.filters import QueryError, parse_time

    from .keys import read_public_keys
    from .verify import Progress, Report, VerifyError, verify
    from .verify_timeout import limited, verify_within

    if (args.path is not None and getattr(args, "data_dir", None) is not None
            and Path(args.path).resolve() != Path(args.data_dir).resolve()):
        print(f"audit-collector verify: two directories given, {args.path} and --data-dir "
              f"{args.data_dir}: give one", file=sys.stderr)
        return 2
    data_dir = args.path if args.path is not None else collector_config.load(
        args, for_serve=False).data_dir
    now_us = time.time_ns() // 1000
    try:
        since = parse_time(args.since, what="--from", now_us=now_us) if args.since else None
        until = parse_time(args.until, what="--to", now_us=now_us) if args.until else None
        for anchor in args.anchor:
            if not _is_signature(anchor):
                raise VerifyError(f"--anchor {anchor[:24]!r} is not a digest signature (the "
                                  f"base64 of 64 bytes, the last field of a digest line)")
        keys: list[PublicKey] | None = None
        source = ""
        if args.public_key is not None:
            keys = read_public_keys(args.public_key)
            source = f"{len(keys)} key(s) from {args.public_key}"
        # -q is for cron and scripts: the verdict only, no progress lines in their logs.
        bar = None if args.no_progress or args.quiet else ProgressBar(sys.stderr)
        progress: Progress | None = bar.update if bar else None
        if args.timeout is not None:
            progress = limited(progress, args.timeout)

        def run() -> Report:
            return verify(data_dir, public_keys=keys, keys_from=source, since_us=since,
                          until_us=until, progress=progress,
                          live=collector_running(data_dir), now_us=now_us,
                          anchors=args.anchor)

        try:
            # Past --timeout, QueryTimeoutError (a QueryError): no verdict, exit 2.
            report = run() if args.timeout is None else verify_within(run, args.timeout)
        finally:
            if bar is not None:
                bar.done()
    except (StorageError, QueryError, VerifyError) as exc:
        print(f"audit-collector verify: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # not this user's to look into: as whom to run it
        print(f"audit-collector verify: {denied_words(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a link loop in segments/: no verdict, not "INVALID"
        print(f"audit-collector verify: cannot read the data directory: {exc}",
              file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug met on hostile input: no verdict either
        # Exit 1 means "checked: INVALID". A crash must not read as a verdict, in either
        # direction, to whatever runs verify on a schedule.
        traceback.print_exc()
        print("audit-collector verify: stopped by the error above before reaching a "
              "verdict (a bug in verify: please report it with the traceback)",
              file=sys.stderr)
        return 2
    # File names are bytes; one that is not UTF-8 must print (escaped), not end the report.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    print_report(report, sys.stdout, quiet=args.quiet)
    if not report.valid:
        return 1
    if (since is not None or until is not None) and not any(
            r.kind == "segment" for r in report.files):
        # Exit 0 says "checked and valid": nothing checked must not read as that.
        print("audit-collector verify: no segment was written in this window, so no "
              "record was checked (the digest chain was): widen --from/--to", file=sys.stderr)
        return 2
    return 0


def _is_signature(text: str) -> bool:
    """An Ed25519 signature as digests carry it: standard base64 of 64 bytes."""
    import base64
    import binascii

    try:
        return len(base64.b64decode(text.strip(), validate=True)) == 64
    except (binascii.Error, ValueError):
        return False


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def print_report(report: object, out: TextIO, *, quiet: bool = False) -> None:
    from .verify import Report

    assert isinstance(report, Report)
    for res in report.files:
        if quiet and res.valid:
            continue
        if res.valid:
            what = (f"{_counted(res.records, 'record')}, {_counted(res.size, 'byte')}"
                    if res.kind == "segment"
                    else _counted(res.records, "digest") if res.kind == "digests"
                    else "in the chain")
            out.write(f"valid    {res.path}  ({what})\n")
        else:
            main, *rest = res.findings
            out.write(f"INVALID  {res.path}  {main}\n")
            out.writelines(f"         {' ' * len(res.path)}  {finding}\n" for finding in rest)
            out.writelines(f"         {' ' * len(res.path)}  {reason}: {count:,} more like "
                           f"these, not listed\n" for reason, count in res.unlisted.items())
        if not quiet:
            out.writelines(f"         {' ' * len(res.path)}  note: {note}\n"
                           for note in res.notes)
    out.writelines(f"note: {note}\n" for note in report.notes)
    segments = [r for r in report.files if r.kind == "segment"]
    digest_files = [r for r in report.files if r.kind == "digests"]
    records = sum(r.records for r in segments)
    size = sum(r.size for r in segments)
    first, newest = report.first_digest, report.newest_digest
    chain = (f"digests #{first.n}-#{newest.n} ({first.time} to {newest.time})"
             if first and newest else "no valid digest")
    out.write(f"checked {len(segments)} segment file(s) ({records:,} records, "
              f"{size / 1e6:.1f} MB) and {len(digest_files)} digest file(s); {chain}; "
              f"keys: {report.keys}\n")
    invalid = report.invalid
    reasons = sorted({reason for r in invalid for reason in r.reasons})
    anchors = [r for r in report.files if r.kind == "anchor"]
    files = len(report.files) - len(anchors)
    out.write(f"summary: {files} file(s)"
              + (f" and {len(anchors)} anchor(s)" if anchors else "")
              + f": {len(report.files) - len(invalid)} valid, {len(invalid)} INVALID"
              + (f" ({', '.join(reasons)})" if reasons else "") + "\n")


def collector_running(data_dir: Path) -> bool:
    """Whether a collector (or a reindex) holds ``data_dir`` right now."""
    from collector.storage.data_dir_lock import data_dir_held

    return data_dir_held(data_dir)


# -- keys ----------------------------------------------------------------------------------
def keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="print the public keys the signing key vouches "
                            "for: its own and those it replaced (for verify --public-key)")
    collector_config.add_arguments(export, ["data_dir", "signing_key"])
    export.add_argument("--out", type=Path, metavar="FILE", help="write to FILE, not stdout")
    export.add_argument("--include", action="append", default=[], metavar="KEY_ID",
                        help="also export this key of the key ring (one you know is yours, "
                        "e.g. retired before the signing key kept a list); repeatable")
    listing = sub.add_parser("list", help="key ids, which one signs now, and which the "
                             "signing key vouches for")
    collector_config.add_arguments(listing, ["data_dir", "signing_key"])
    rotate = sub.add_parser("rotate", help="sign with a new key from now on (stop the "
                            "collector first); old public keys stay in the key ring")
    collector_config.add_arguments(rotate, ["data_dir", "signing_key", "digest_interval"])


def run_keys(args: argparse.Namespace) -> int:
    config = collector_config.load(args, for_serve=False)
    try:
        if args.keys_command == "rotate":
            from .keys import default_signing_key_path

            refused = foreign_owner(
                config.data_dir, command="keys rotate", writes="a new signing key",
                then="it would not start again",
                replaces=config.signing_key or default_signing_key_path(config.data_dir),
                config_file=config.config_file)
            if refused is not None:
                raise IntegrityError(refused)
            return _rotate(config.data_dir, config.signing_key, config.digest_interval)
        return _show(config.data_dir, config.signing_key, args)
    except StorageError as exc:  # IntegrityError, or the data directory is in use
        print(f"audit-collector keys {args.keys_command}: {exc}", file=sys.stderr)
        return 2


def _show(data_dir: Path, signing_key: Path | None, args: argparse.Namespace) -> int:
    from .keys import KeyRing, export_pem

    keys_dir = KeyRing(data_dir / "keys")
    ring, skipped = keys_dir.read()
    loose = keys_dir.loose_mode()
    for problem in [*skipped, *([loose] if loose else [])]:
        print(f"note: {problem}", file=sys.stderr)
    if not ring:
        raise IntegrityError(f"no public keys in {data_dir / 'keys'}: the collector makes "
                             f"its key on first start (is --data-dir right?)")
    if args.keys_command == "list":
        try:
            current, vouched = _vouched(data_dir, signing_key)
        except IntegrityError as exc:  # listing needs no secret: say what is unknown
            current, vouched = None, {}
            print(f"note: {exc}; which keys it vouches for is not shown", file=sys.stderr)
        for key in ring.values():
            mark = ("  (current signing key)" if key.id == current
                    else "  (retired: vouched for by the signing key)" if key.id in vouched
                    else "  (not vouched for by the signing key: not exported)"
                    if current else "")
            print(f"{key.id}  ed25519  {key.b64}{mark}")
        return 0
    # Only what the signing key vouches for: the key ring is in the data directory, and
    # whoever writes that could add a key of their own, re-sign everything with it, and
    # have it handed to the auditor by the next export.
    current, vouched = _vouched(data_dir, signing_key)
    for key_id in args.include:
        if key_id not in ring:
            raise IntegrityError(f"--include {key_id}: no such key in {data_dir / 'keys'} "
                                 f"(`audit-collector keys list` shows the ids)")
        vouched.setdefault(key_id, ring[key_id])
    left_out = [key_id for key_id in ring if key_id not in vouched]
    signers = [key_id for key_id in left_out if key_id in _digest_signers(data_dir)]
    if signers:
        # Exported without them, the auditor's verify calls every digest they signed
        # untrusted; exported with them unasked, a planted key would be vouched for.
        raise IntegrityError(
            f"key(s) {', '.join(signers)} of the key ring signed digests of this store, "
            f"and the signing key does not vouch for them: a rotation before `keys rotate` "
            f"kept a list of the keys it retired, or someone who can write the data "
            f"directory put them there. If you rotated from them, export with "
            f"{' '.join(f'--include {k}' for k in signers)}")
    text = export_pem(list(vouched.values()), current)
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {len(vouched)} public key(s) to {args.out}: keep it away from the data "
              f"directory and pass it to `audit-collector verify --public-key`",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    if left_out:
        print(f"left out {len(left_out)} key(s) of the key ring that the signing key does "
              f"not vouch for: {', '.join(left_out)}. A key there may have been put there "
              f"by anyone who can write the data directory; if one is yours (retired "
              f"before the signing key kept a list of them), add it with --include ID",
              file=sys.stderr)
    return 0


def _digest_signers(data_dir: Path) -> set[str]:
    """The ids of the keys the store's digests name as their signers."""
    from . import digests as d

    signers: set[str] = set()
    for _, path in d.list_digest_files(data_dir / d.DIGESTS_DIR):
        try:
            signers.update(str(g.key) for g in d.read_file(path).digests)
        except OSError:
            continue  # unreadable: verify reports it; it names no signer here
    return signers


def _vouched(data_dir: Path, signing_key: Path | None) -> tuple[str, dict[str, PublicKey]]:
    """The signing key's id, and the public keys it vouches for by id: its own (derived
    from it) and those it replaced (kept beside it by `keys rotate`)."""
    from .keys import default_signing_key_path, load_signing_key, read_retired_keys

    path = signing_key or default_signing_key_path(data_dir)
    try:
        key = load_signing_key(path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}. The export is made from the signing key, so that a "
                             f"key put in {data_dir / 'keys'} by someone else cannot get in: "
                             f"run this as the collector's user, with --signing-key if the "
                             f"key lives elsewhere") from None
    vouched = {k.id: k for k in read_retired_keys(path)}
    vouched[key.id] = key.public
    return key.id, vouched


def _rotate(data_dir: Path, signing_key: Path | None, interval: float) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from collector.storage.data_dir_lock import lock_data_dir
    from collector.storage.in_the_way import SEGMENTS, SEGMENTS_THEN, refuse_other_than_a_dir
    from collector.storage.segments import list_segment_files

    from .keys import (
        KeyRing,
        SigningKey,
        default_signing_key_path,
        install_signing_key,
        prepare_signing_key,
        retiring,
    )
    from .ledger import Ledger

    refuse_other_than_a_dir(data_dir / "segments", SEGMENTS, SEGMENTS_THEN)
    if not (data_dir / "segments").is_dir():
        raise IntegrityError(f"{data_dir} has no segments/: not a collector data directory")
    # A FIFO or a file in place of keys/ first: it was "no signing key at keys/...".
    KeyRing(data_dir / "keys").refuse_other_than_a_directory()
    key_path = signing_key or default_signing_key_path(data_dir)
    if not key_path.exists():
        raise IntegrityError(f"no signing key at {key_path}: nothing to rotate (check "
                             f"--signing-key; the collector makes its key on first start)")
    lock = lock_data_dir(data_dir)  # refuses while the collector runs
    try:
        files = list_segment_files(data_dir / "segments")
        if not files or files[-1].compressed:
            raise IntegrityError("no active segment to record the rotation in: start the "
                                 "collector once, stop it, then rotate")
        ledger = Ledger.open(data_dir, signing_key, interval, data_dir / "quarantine")
        old = ledger.key
        new = SigningKey(Ed25519PrivateKey.generate(), old.path)
        # The new key on disk first, beside the old one: a rotation recorded before its
        # key was written (a full disk) left a store whose next digests the old key
        # signed, against its own record. Then its public key, then the record.
        tmp = prepare_signing_key(old.path, new.private)
        ring = KeyRing(data_dir / "keys")
        public_path = ring.directory / f"ed25519-{new.id}.pub"
        try:
            # The old public key beside the signing key, in its custody: exports vouch
            # for it from there, never from the key ring alone. Listed before the record
            # (a kill between the two would leave a rotation no list vouches across).
            with retiring(old.path, old.public):
                ring.add(new.public)
                # Signed by the old key, naming the new one: verify follows the
                # rotation from a key exported before it.
                ledger.rotate_key(new, active_path=files[-1].path)
        except BaseException as exc:
            # Not recorded: nothing of it stays (the new key never signed anything).
            tmp.unlink(missing_ok=True)
            public_path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise IntegrityError(
                    f"the key rotation could not be recorded ({exc.strerror or exc}): "
                    f"nothing was changed, {old.path} still holds key {old.id}; "
                    f"{_remedy(exc, data_dir)} and run `keys rotate` again") from None
            raise
        try:
            install_signing_key(tmp, old.path)
        except OSError as exc:
            raise IntegrityError(
                f"the rotation to key {new.id} is recorded, but the new key could not "
                f"replace {old.path} ({exc.strerror or exc}): move {tmp} to {old.path} "
                f"before the collector starts again") from None
    finally:
        lock.close()
    print(f"rotated the signing key: {old.id} -> {new.id} ({old.path}); the old public key "
          f"stays in the key ring. Export the keys again (`audit-collector keys export`).")
    return 0


def _remedy(exc: OSError, data_dir: Path) -> str:
    """What to do about ``exc``, met writing the rotation under ``data_dir``: "make
    room" only when the disk is full (said of every error, it sent a permission problem
    looking for space)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"make room in {data_dir}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" ({exc.filename})" if exc.filename else ""
        return (f"let the signing key's owner write {data_dir}/keys and "
                f"{data_dir}/digests{where}")
    return f"fix what the error names in {data_dir}"

