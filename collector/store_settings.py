"""The store's settings (``StorageSettings``): where its data directory is, when a segment
rotates, how long records are kept, tamper evidence, and when accepted work waiting for
the commit thread reads as stalled; each checked once, when made, with an error that
says what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collector.storage.errors import StorageSettingsError

__all__ = ["StorageSettings"]


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path
    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age: float = 3600.0  # seconds
    compress_sealed: bool = False
    retention_days: float = 365.0
    retention_bytes: int | None = None  # total size cap of sealed segments
    #: Tamper evidence: hash-chain the records and write signed digests. Off only to
    #: measure what it costs (benchmarks/integrity.py).
    chain: bool = True
    signing_key: Path | None = None  # default: <data_dir>/keys/signing-key.pem
    digest_interval: float = 300.0  # seconds between checkpoints while records arrive
    #: Seconds accepted work may wait for the commit thread before ``refusal`` says
    #: ``WRITE_STALLED`` (a hung fsync): well above a slow disk's fsync, well below
    #: what a probe's user waits before taking the collector out of rotation.
    write_stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.signing_key is not None:
            object.__setattr__(self, "signing_key", Path(self.signing_key))
        if self.digest_interval <= 0:
            raise StorageSettingsError(
                f"digest_interval={self.digest_interval}: use a positive number of seconds")
        if not self.write_stall_timeout > 0:  # nan too
            raise StorageSettingsError(
                f"write_stall_timeout={self.write_stall_timeout}: use a positive number of "
                f"seconds")
        if self.max_segment_bytes < 1024:
            raise StorageSettingsError(
                f"max_segment_bytes={self.max_segment_bytes}: use at least 1024 bytes")
        if self.max_segment_age <= 0:
            raise StorageSettingsError(
                f"max_segment_age={self.max_segment_age}: use a positive number of seconds")
        if not self.retention_days > 0:  # nan too
            raise StorageSettingsError(
                f"retention_days={self.retention_days}: use a positive number of days")
        if self.retention_bytes is not None and self.retention_bytes < 0:
            raise StorageSettingsError(
                f"retention_bytes={self.retention_bytes}: use a size in bytes, or None")
