"""Where events go. ``submit`` is called on the request path and must only enqueue."""

from .base import Sink
from .batching import BatchingQueue
from .jsonl_file import JsonlFileSink
from .memory import MemorySink
from .otel import OTelLogSink

__all__ = ["BatchingQueue", "JsonlFileSink", "MemorySink", "OTelLogSink", "Sink"]
