"""Shipping events to the collector: ``CollectorSink`` (queue, batches, acknowledgements,
retries), its disk spool, and one connection speaking ``audit_middleware.wire``."""

from .sink import CollectorSink

__all__ = ["CollectorSink"]
