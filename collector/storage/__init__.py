"""The storage engine's parts: record bytes, segment files, compression, source ranges,
retention, the index's chunks and their background indexer.
``collector.store.Store`` puts them together; ``collector.index`` indexes them;
``collector.query`` reads them back."""
