"""The shipper configurations in docs/shipping.md parse, point at the segments a real
Store writes (and at nothing else), drop the segment header, and send to the HTTP ingest
route the way it expects. Their file globs and header filters, applied to real segments
as the shippers apply them, yield exactly the stored records."""

from __future__ import annotations

import fnmatch
import gzip
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from collector.http_ingest import PATH
from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import event
from tests.e2e.harness import stored_events

DOC = Path(__file__).resolve().parents[2] / "docs" / "shipping.md"
SEGMENTS = "/var/lib/audit/segments"
EXPECTED: list[dict[str, Any]] = []  # the stored records, filled by the fixture


def configs() -> dict[str, tuple[str, str]]:
    """name -> (language, text) of each ``<!-- config: name -->`` block."""
    text = DOC.read_text()
    found = re.findall(r"<!-- config: ([\w-]+) -->\n```(\w+)\n(.*?)```", text, re.DOTALL)
    return {name: (lang, body) for name, lang, body in found}


def load(name: str) -> Any:
    lang, body = configs()[name]
    return tomllib.loads(body) if lang == "toml" else yaml.safe_load(body)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Real segments, plus files a shipper must leave alone (a compressed copy of a
    sealed segment, a segment being created): their lines would be read twice."""
    data = tmp_path_factory.mktemp("ship") / "data"
    with Store(StorageSettings(data_dir=data, max_segment_bytes=4096)) as store:
        for i in range(1, 31):
            store.write([event(i)])
    EXPECTED.extend(stored_events(data))
    segments = data / "segments"
    first = min(segments.glob("segment-*.jsonl")).read_bytes()
    (segments / "segment-00000001-20261126T000000Z.jsonl.gz").write_bytes(gzip.compress(first))
    (segments / "segment-00000099-20261126T000000Z.jsonl.tmp").write_bytes(first)
    yield data


def shipped(data_dir: Path, include: list[str], exclude: list[str],
            is_header: Any) -> list[dict[str, Any]]:
    """What a shipper with these globs and this header test reads from real segments."""
    records = []
    for path in sorted((data_dir / "segments").iterdir()):
        as_configured = f"{SEGMENTS}/{path.name}"
        if not any(fnmatch.fnmatch(as_configured, g) for g in include):
            continue
        if any(fnmatch.fnmatch(as_configured, g) or fnmatch.fnmatch(path.name, g)
               for g in exclude):
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        for line in data.splitlines():
            record = orjson.loads(line)
            if not is_header(record):
                records.append(record)
    return records


def test_every_documented_configuration_parses() -> None:
    assert set(configs()) == {"otelcol-otlp", "vector-tail", "fluent-bit-tail", "filebeat",
                              "otelcol-filelog", "vector-http", "fluent-bit-http"}
    for name in configs():
        assert load(name)


def test_vector_reads_exactly_the_stored_records(data_dir: Path) -> None:
    config = load("vector-tail")
    source = config["sources"]["audit_segments"]
    assert source["fingerprint"] == {"strategy": "checksum", "lines": 1,
                                     "ignored_header_bytes": 0}
    remap = config["transforms"]["audit_records"]
    assert "if exists(.segment) { abort }" in remap["source"] and remap["drop_on_abort"]
    records = shipped(data_dir, source["include"], source.get("exclude", []),
                      lambda r: "segment" in r)
    assert records == EXPECTED
    assert len(records) == 30


def test_fluent_bit_reads_exactly_the_stored_records(data_dir: Path) -> None:
    config = load("fluent-bit-tail")["pipeline"]
    (tail,) = config["inputs"]
    (grep,) = config["filters"]
    assert tail["db.compare_filename"] is True and tail["read_from_head"] is True
    assert grep["exclude"] == "$segment['id'] .+"
    records = shipped(data_dir, [tail["path"]], tail["exclude_path"].split(","),
                      lambda r: bool(re.fullmatch(r".+", str(r.get("segment", {}).get("id", "")))
                                     if isinstance(r.get("segment"), dict) else False))
    assert records == EXPECTED


def test_filebeat_fingerprints_the_unique_header_and_reads_the_records(data_dir: Path) -> None:
    (source,) = load("filebeat")["filebeat.inputs"]
    fingerprint = source["prospector.scanner.fingerprint"]
    assert fingerprint["enabled"] and fingerprint["offset"] == 0
    header = next((data_dir / "segments").glob("segment-*.jsonl")).read_bytes()
    id_end = header.index(b'","seq"')
    assert 64 <= fingerprint["length"] <= 1024 and id_end <= fingerprint["length"]
    exclude = [p.replace("\\.", ".").replace("$", "") for p in
               source["prospector.scanner.exclude_files"]]
    (drop,) = [p["drop_event"] for p in source["processors"] if "drop_event" in p]
    assert drop["when"]["has_fields"] == ["segment"]
    records = shipped(data_dir, source["paths"], [f"*{e}" for e in exclude],
                      lambda r: "segment" in r)
    assert records == EXPECTED


def test_the_filelog_receiver_reads_the_records_and_keeps_its_offsets(data_dir: Path) -> None:
    config = load("otelcol-filelog")
    receiver = config["receivers"]["filelog/audit"]
    assert receiver["start_at"] == "beginning" and receiver["storage"] in config["extensions"]
    assert receiver["fingerprint_size"] == "1kb"
    (flt,) = [op for op in receiver["operators"] if op["type"] == "filter"]
    assert "segment" in flt["expr"]
    records = shipped(data_dir, receiver["include"], receiver["exclude"],
                      lambda r: "segment" in r)
    assert records == EXPECTED


def test_the_http_senders_post_json_lines_with_the_token_to_the_ingest_route() -> None:
    vector = load("vector-http")["sinks"]["audit_collector"]
    assert vector["uri"].endswith(PATH) and vector["method"] == "post"
    assert vector["framing"]["method"] == "newline_delimited"
    assert vector["encoding"]["codec"] == "json"
    assert vector["auth"]["strategy"] == "bearer"
    (fluent,) = load("fluent-bit-http")["pipeline"]["outputs"]
    assert fluent["uri"] == PATH and fluent["format"] == "json_lines"
    assert fluent["json_date_key"] is False  # no field the schema does not allow
    assert any(h.startswith("Authorization Bearer ") for h in fluent["header"])


def test_the_otlp_receiver_listens_where_the_forwarder_sends() -> None:
    http = load("otelcol-otlp")["receivers"]["otlp"]["protocols"]["http"]
    assert http["endpoint"].endswith(":4318")
    assert "--forward-endpoint http://otelcol.internal:4318/v1/logs" in DOC.read_text()
