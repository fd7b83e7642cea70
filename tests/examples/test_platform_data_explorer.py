"""Data Explorer: bucket events target the bucket id, file events the file's address;
a private bucket's file operations also record the application's credentials read."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

FILE = "reads/sample 1.fastq"


@pytest.fixture
def creds(platform: TestClient, audit, place) -> str:
    ident: str = platform.post(f"{place.path}/credentials", json={
        "name": "aws", "provider": "aws", "keys": {"key": "k"}}).json()["id"]
    audit.events.clear()
    return ident


def add_bucket(platform: TestClient, place, uri: str, creds: str | None = None) -> str:
    body = {"name": "reads", "uri": uri} | ({"credentials_id": creds} if creds else {})
    response = platform.post(f"{place.path}/data-links", json=body)
    assert response.status_code == 201, response.text
    bucket_id: str = response.json()["id"]
    return bucket_id


def test_bucket_add_edit_hide_show_delete(platform: TestClient, audit, place) -> None:
    bucket = add_bucket(platform, place, "s3://public-data")
    link = f"{place.path}/data-links/{bucket}"
    assert platform.put(link, json={"name": "renamed"}).status_code == 200
    assert platform.post(f"{link}/hide").json()["hidden"] is True
    assert platform.post(f"{link}/show").json()["hidden"] is False
    assert platform.delete(link).status_code == 200
    assert audit.records() == [place.expect(t, bucket) for t in (
        "bucket_created", "bucket_updated", "bucket_hidden", "bucket_shown", "bucket_deleted")]


def test_public_bucket_files_are_recorded_by_address(platform: TestClient, audit, place) -> None:
    bucket = add_bucket(platform, place, "gs://public-data")
    link = f"{place.path}/data-links/{bucket}"
    audit.events.clear()
    assert platform.put(f"{link}/files/{FILE}", content=b"ACGT" * 500).status_code == 201
    preview = platform.get(f"{link}/preview/{FILE}").json()["preview"]
    download = platform.get(f"{link}/files/{FILE}").content
    assert (len(preview), download) == (1024, b"ACGT" * 500)
    address = f"gs://public-data/{FILE}"
    assert audit.records() == [place.expect(t, address) for t in (
        "bucket_file_uploaded", "bucket_file_previewed", "bucket_file_downloaded")]


def test_private_bucket_files_also_record_the_credentials_read(
    platform: TestClient, audit, place, creds: str
) -> None:
    bucket = add_bucket(platform, place, "s3://private-data", creds)
    link = f"{place.path}/data-links/{bucket}"
    audit.events.clear()
    platform.put(f"{link}/files/{FILE}", content=b"x")
    platform.get(f"{link}/files/{FILE}")
    read = place.expect("credentials_accessed", creds, principal="system")
    address = f"s3://private-data/{FILE}"
    assert audit.records() == [read, place.expect("bucket_file_uploaded", address),
                               read, place.expect("bucket_file_downloaded", address)]


def test_a_missing_file_is_not_found_and_not_recorded_as_downloaded(
    platform: TestClient, audit, place
) -> None:
    bucket = add_bucket(platform, place, "s3://public-data")
    audit.events.clear()
    response = platform.get(f"{place.path}/data-links/{bucket}/files/nope.txt")
    assert response.status_code == 404
    assert audit.events == []
