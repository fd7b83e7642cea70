"""A miniature workflow platform that reaches every audit event of the seed catalogue
through its HTTP API. Build it with :func:`create_app`; see ``tour.py`` for a walk
through every event, and ``examples/run.py`` to serve it."""

from .app import create_app

__all__ = ["create_app"]
