"""``audit-collector``: the collector's command line.

Each subcommand is one ``Command`` in :data:`COMMANDS`: a function adding its arguments
and a function running it (returning the exit code). To add a subcommand, write those
two functions (in their own module when they grow) and append a ``Command`` to the
table; ``main`` needs no change.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from . import config as collector_config
from . import installed_version
from . import loss_commands as losses
from . import read_commands as read
from . import user_commands as users
from .integrity import commands as integrity


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- serve -------------------------------------------------------------------------------------
def serve_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser)


def serve(args: argparse.Namespace) -> int:
    # The query API's module (uvicorn) is imported here, not once the store is open: a
    # missing collector extra failed after start-up had made the data directory.
    from . import serve as serving
    from .api import server  # noqa: F401
    from .ingest import IngestError
    from .storage.errors import StorageError

    try:
        return serving.run(collector_config.load(args))
    except (IngestError, StorageError) as exc:
        print(f"audit-collector serve: {exc}", file=sys.stderr)
        return 1


# -- read commands (query, tail, stats, reindex) -----------------------------------------------
# Their functions go here (or in their own modules), and their Command entries in the
# table below. For the data directory, use collector_config.add_arguments(parser,
# ["data_dir"]) and collector_config.load(args).data_dir: --config, AUDIT_DATA_DIR and
# the TOML file then work the same as for serve.


def _read(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A read command with its user-fixable errors printed plainly (exit code 2)."""

    def guarded(args: argparse.Namespace) -> int:
        from .query import QueryError
        from .read_commands import CommandError

        try:
            return run(args)
        except (QueryError, CommandError) as exc:
            print(f"audit-collector {args.command}: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `audit-collector query ... | head`
            return 0

    return guarded


COMMANDS: list[Command] = [
    Command("serve", "run the collector: ingest events from apps into the store",
            serve_arguments, serve),
    Command("query", "search stored events (filters, pages, table/jsonl/csv/ocsf/ecs)",
            read.query_arguments, _read(read.run_query)),
    Command("tail", "print the newest events; -f keeps printing new ones",
            read.tail_arguments, _read(read.run_tail)),
    Command("stats", "counts, segments, sizes, ingest rate, dedupe and reject counters",
            read.stats_arguments, _read(read.run_stats)),
    Command("reindex", "rebuild the index from the segments (stop the collector first)",
            read.reindex_arguments, _read(read.run_reindex)),
    Command("losses", "sources that lost events; `losses ack` acknowledges a source's "
            "losses (through the running collector's API)",
            losses.losses_arguments, _read(losses.run_losses)),
    Command("users", "reader accounts of the query API and admin panel: add, list, remove",
            users.users_arguments, users.run_users),
    Command("verify", "check segments and digests for tampering (works on copies); exit 0 "
            "only if all valid", integrity.verify_arguments, integrity.run_verify),
    Command("keys", "signing keys: export the public keys, list them, rotate",
            integrity.keys_arguments, integrity.run_keys),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-collector",
        description="Store, index and query audit events shipped by audit_middleware.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help,
                                             description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    run = next(c.run for c in COMMANDS if c.name == args.command)
    from .storage.errors import StorageError

    if sys.stdout is None and args.command != "serve":  # started with stdout closed (>&-)
        print(f"audit-collector {args.command}: standard output is closed: there is "
              f"nowhere to write the result", file=sys.stderr)
        return 2

    try:
        return run(args)
    except collector_config.ConfigError as exc:
        print(f"audit-collector {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if not missing_extra(exc.name):
            raise  # a bug or a broken install: its traceback says which module, where
        # `pip install /path/to/audit-middleware` (the app side) installs this script
        # too, without the dependencies of the collector extra.
        print(f"audit-collector {args.command}: {exc.name} is not installed: the "
              f"collector needs the package's `collector` extra: pip install "
              f"'/path/to/audit-middleware[collector]' (from a clone of this repository: "
              f"the audit-middleware on PyPI is another project)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `audit-collector verify | head`: the reader has what it wanted
        _quiet_stdout()
        return 1
    except (StorageError, OSError) as exc:
        # A data directory in use or unreadable, a path that is a file, a read-only
        # mount...: what and where, not a traceback.
        if isinstance(exc, PermissionError):
            from .ownership import denied_words

            print(f"audit-collector {args.command}: {denied_words(exc)}", file=sys.stderr)
            return 2
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        # Not again when the words name it already (a segment file in the way's).
        where = (f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename
                 and str(exc.filename) not in str(reason) else "")
        print(f"audit-collector {args.command}: {reason}{where}", file=sys.stderr)
        return 2


#: The modules of the `collector` extra's packages (pyproject.toml), as the collector
#: imports them.
EXTRA_MODULES: Final = ("uvicorn", "h11", "cryptography", "opentelemetry.sdk",
                        "opentelemetry.exporter.otlp.proto.http")


def missing_extra(name: str | None) -> bool:
    """Whether a ModuleNotFoundError's ``name`` says the collector extra is not
    installed: it is one of its modules, a package above one or a module in one, and
    that module cannot be found. Any other (a module of an installed package that a
    release renamed, one a dependency imports itself) is another fault, which "install
    the extra", already installed, would hide."""
    if not name:
        return False
    for module in EXTRA_MODULES:
        if name == module or module.startswith(f"{name}.") or name.startswith(f"{module}."):
            return not _found(module)
    return False


def _found(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a package above it is missing (or half-made)
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
