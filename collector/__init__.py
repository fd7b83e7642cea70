"""The collector process: receives audit events from apps, stores them durably in
rotated, indexed segments, and answers queries. Storage lives in ``collector.store``,
queries in ``collector.query``."""
