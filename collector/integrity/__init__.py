"""Tamper evidence: hash-chained records, signed digests, and their verification.

- ``chain``: the record hash chain (computed by the store's commit thread).
- ``keys``: the Ed25519 signing key and the key ring of every public key ever used.
- ``digests``: the signed digest lines and the files that hold them.
- ``ledger``: the store's side: it follows the active segment and writes the digests
  (at start, every ``digest_interval``, at each seal, before retention, at stop);
  ``ledger_chain_end`` finds where its chain goes on at start, ``segment_state`` what a
  digest says of a segment file.
- ``verify``: ``audit-collector verify``, offline, on any copy: ``digest_chain`` checks
  the digests, ``scan`` re-hashes one segment, ``findings`` holds what they report;
  its walk over the segments is in ``segment_listing``, ``segment_compare`` and
  ``missing_segments``.
- ``commands``: the ``verify`` and ``keys`` subcommands; ``verify_timeout`` bounds
  ``verify --timeout`` (no verdict past it, a read the disk never answers included).

This package's ``__init__`` imports nothing: ``collector.storage.records`` uses
``chain`` and must not pull in the rest (which imports the storage modules).
"""
