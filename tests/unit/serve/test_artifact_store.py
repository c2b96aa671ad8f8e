"""Artifact blob stores: local folder, and S3 over real HTTP against moto's server mode."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from serve.stores import artifacts
from serve.stores.artifacts import (
    ArtifactNotFoundError,
    ArtifactStoreError,
    InvalidArtifactKeyError,
    LocalBlobStore,
    S3BlobStore,
    open_blob_store,
)

DATA = b"\x89PNG\r\n\x1a\n" + b"pretend image bytes" * 10
KEY = hashlib.sha256(DATA).hexdigest()
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
BAD_KEYS = ["../../etc/passwd", KEY.upper(), KEY[:-1], KEY + "0", "", "g" * 64, f"{KEY[:32]}/{KEY[33:]}"]


# -- local -----------------------------------------------------------------------------------


def test_local_put_get_is_content_addressed_and_idempotent(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.put(DATA, "image/png") == KEY
    assert store.put(DATA, "image/png") == KEY
    assert store.get(KEY) == DATA and store.exists(KEY)
    assert store.content_type(KEY) == "image/png"
    assert store.path(KEY) == tmp_path / "blobs" / KEY[:2] / KEY[2:4] / KEY
    assert store.uri(KEY).startswith("file://") and store.uri(KEY).endswith(KEY)
    assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []


def test_local_missing_and_invalid_keys(tmp_path):
    store = LocalBlobStore(tmp_path)
    missing = "0" * 64
    with pytest.raises(KeyError):
        store.get(missing)
    with pytest.raises(ArtifactNotFoundError, match="no artifact"):
        store.get(missing)
    assert not store.exists(missing)
    for bad in BAD_KEYS:
        with pytest.raises(InvalidArtifactKeyError):
            store.get(bad)
        with pytest.raises(InvalidArtifactKeyError):
            store.exists(bad)


def test_local_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith(KEY):  # the blob itself: simulate the disk failing at the last step
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
    with pytest.raises(ArtifactStoreError, match="could not write artifact"):
        store.put(DATA)
    assert not store.exists(KEY)
    assert list((tmp_path / ".tmp").iterdir()) == []  # no half-written temp file left


def test_local_corruption_is_detected(tmp_path):
    store = LocalBlobStore(tmp_path)
    store.put(DATA)
    store.path(KEY).write_bytes(DATA + b"x")
    with pytest.raises(ArtifactStoreError, match="corrupt"):
        store.get(KEY)


# -- S3 over HTTP (moto server mode) ----------------------------------------------------------


@pytest.fixture()
def s3(moto_endpoint, request):
    bucket = "genserve-" + request.node.name.replace("_", "-")[:40].lower()
    return S3BlobStore(bucket, endpoint_url=moto_endpoint, prefix="artifacts/", create_bucket=True, **CREDS)


def test_s3_put_get_over_http(s3):
    assert s3.put(DATA, "image/png") == KEY
    assert s3.put(DATA, "image/png") == KEY  # idempotent
    assert s3.exists(KEY) and s3.get(KEY) == DATA
    assert s3.content_type(KEY) == "image/png"
    assert s3.uri(KEY) == f"s3://{s3.bucket}/artifacts/{KEY}"
    listed = s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"artifacts/{KEY}"]
    url = s3.presigned_url(KEY)
    assert url.startswith(s3.endpoint_url) and KEY in url


def test_s3_missing_and_invalid_keys(s3):
    with pytest.raises(KeyError):
        s3.get("1" * 64)
    assert not s3.exists("1" * 64)
    for bad in BAD_KEYS:
        with pytest.raises(InvalidArtifactKeyError):
            s3.get(bad)


def test_s3_missing_bucket_is_a_clear_error(moto_endpoint):
    store = S3BlobStore("no-such-bucket", endpoint_url=moto_endpoint, **CREDS)
    with pytest.raises(ArtifactStoreError, match="S3 refused .*NoSuchBucket"):
        store.put(DATA)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_unreachable_endpoint_fails_clearly_and_records_nothing(moto_endpoint):
    dead = S3BlobStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{_closed_port()}", connect_timeout=1, max_attempts=1, **CREDS
    )
    start = time.monotonic()
    with pytest.raises(ArtifactStoreError, match="unreachable"):
        dead.put(DATA, "image/png")
    with pytest.raises(ArtifactStoreError, match="unreachable"):
        dead.get(KEY)
    with pytest.raises(ArtifactStoreError, match="unreachable"):
        dead.exists(KEY)
    assert time.monotonic() - start < 15
    with pytest.raises(ArtifactStoreError, match="unreachable"):
        S3BlobStore("b", endpoint_url=dead.endpoint_url, connect_timeout=1, max_attempts=1, create_bucket=True, **CREDS)


def test_open_blob_store_urls(tmp_path, moto_endpoint):
    assert isinstance(open_blob_store(str(tmp_path)), LocalBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}"), LocalBlobStore)
    s3 = open_blob_store(f"s3://url-bucket/out?endpoint_url={moto_endpoint}", create_bucket=True, **CREDS)
    assert isinstance(s3, S3BlobStore) and s3.prefix == "out/"
    assert s3.get(s3.put(DATA)) == DATA
    with pytest.raises(ValueError, match="unsupported"):
        open_blob_store("ftp://x/y")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
