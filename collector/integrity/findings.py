"""What ``verify`` finds: the reasons it gives, one file's result, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .digests import Digest

# The reasons ``verify`` gives (docs/integrity.md, "Reasons", explains each).
HASH_MISMATCH: Final = "hash mismatch"
RECORD_MODIFIED: Final = "record modified"
RECORD_MISSING: Final = "record missing"
RECORD_DUPLICATED: Final = "record duplicated"
RECORDS_REORDERED: Final = "records reordered"
SEGMENT_MISSING: Final = "segment missing"
SEGMENT_MOVED: Final = "segment moved or renamed"
DIGEST_MISSING: Final = "digest missing"
DIGEST_MOVED: Final = "digest moved or renamed"
SIGNATURE_INVALID: Final = "signature invalid"
CHAIN_BROKEN: Final = "chain broken"
GAP_IN_TIME: Final = "gap in time"

# Findings listed per reason and file; the rest are counted. A file of millions of
# damaged lines (5 MB of newlines appended) made millions of findings: 680 MB printed,
# 1.7 GB of memory. The count and the first ones say as much.
MAX_LISTED: Final = 50


@dataclass(frozen=True)
class Finding:
    reason: str
    detail: str
    count: int = 1  # alike findings this one stands for (``detail`` names the first)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class FileResult:
    path: str  # relative to the data directory
    kind: str  # "segment", "digests" or "anchor"
    seq: int
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0
    size: int = 0  # uncompressed bytes (segments)
    #: findings beyond ``MAX_LISTED`` of a reason: counted, not kept
    unlisted: dict[str, int] = field(default_factory=dict)
    _listed: dict[str, int] = field(default_factory=dict, repr=False)  # kept, by reason

    @property
    def valid(self) -> bool:
        return not self.findings

    def add(self, reason: str, detail: str, *, count: int = 1) -> None:
        """One finding (or ``count`` alike, of which ``detail`` describes the first)."""
        # Counted as they are kept, not by a scan of them: a damaged segment adds one
        # finding per record, and a scan per finding made that quadratic.
        if self._listed.get(reason, 0) < MAX_LISTED:
            self.findings.append(Finding(reason, detail))
            self._listed[reason] = self._listed.get(reason, 0) + 1
            count -= 1
        if count > 0:
            self.unlisted[reason] = self.unlisted.get(reason, 0) + count

    @property
    def reasons(self) -> list[str]:
        return list(dict.fromkeys(f.reason for f in self.findings))


@dataclass
class Report:
    data_dir: Path
    files: list[FileResult]
    notes: list[str]
    keys: str  # where the trusted keys came from
    digests: int = 0
    first_digest: Digest | None = None
    newest_digest: Digest | None = None

    @property
    def valid(self) -> bool:
        return all(f.valid for f in self.files)

    @property
    def invalid(self) -> list[FileResult]:
        return [f for f in self.files if not f.valid]


class Results:
    """The results being gathered, one per file (created on first mention)."""

    def __init__(self) -> None:
        self.by_path: dict[tuple[int, str], FileResult] = {}
        self.notes: list[str] = []  # about the whole directory

    def of(self, path: str, kind: str, seq: int) -> FileResult:
        key = (seq, path)
        if key not in self.by_path:
            self.by_path[key] = FileResult(path, kind, seq)
        return self.by_path[key]

    def ordered(self) -> list[FileResult]:
        """By seq; a segment before its digest file."""
        return sorted(self.by_path.values(), key=lambda r: (r.seq, r.kind != "segment",
                                                            r.path))
