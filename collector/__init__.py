"""The collector process: receives audit events from apps, stores them durably in
rotated, indexed segments, and answers queries. Storage lives in ``collector.store``,
queries in ``collector.query``."""


def installed_version() -> str:
    """The installed distribution's version (what an upgrade changes; printed by
    ``--version`` and at start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audit-middleware")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed: run from a source tree)"
