"""Content-addressed blob storage for outputs: a local folder by default, or S3 (any endpoint).

Keys are the sha256 (64 lowercase hex digits) of the bytes, so a `put` is idempotent and a
key can never name a path outside the store. A blob is either complete or absent:

* `LocalBlobStore` writes to a temporary file in the same filesystem, fsyncs it and
  renames it into place (rename is atomic on POSIX); a crash leaves at most a stray
  temporary file under ``.tmp/``, never a partial blob under its key.
* `S3BlobStore` uses one ``PutObject`` (S3 makes an object visible only when the upload
  completes) with a SHA-256 checksum the server checks. An unreachable endpoint, a
  missing bucket or refused credentials raise `ArtifactStoreError`; nothing is recorded.

Reads check the bytes against the key, so silent corruption surfaces as an error.

Usage::

    store = LocalBlobStore("data/artifacts")            # or S3BlobStore("bucket", endpoint_url=...)
    key = store.put(png_bytes, "image/png")
    assert store.get(key) == png_bytes
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

logger = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class ArtifactStoreError(RuntimeError):
    """The artifact store could not complete an operation (unreachable, refused, corrupt)."""


class ArtifactNotFoundError(ArtifactStoreError, KeyError):
    """No blob under this key. Also a `KeyError`, so ``except KeyError`` works."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "artifact not found"


class InvalidArtifactKeyError(ValueError):
    """The key is not a 64-digit lowercase hex sha256."""


def blob_key(data: bytes) -> str:
    """The key of ``data``: its sha256 in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    """Returns ``key`` if it is a sha256 hex key.

    Raises:
        InvalidArtifactKeyError: for anything else (including path tricks such as ``../x``).
    """
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidArtifactKeyError(f"artifact key must be 64 lowercase hex digits (a sha256), got {key!r}")
    return key


def _check_integrity(key: str, data: bytes, where: str) -> bytes:
    if blob_key(data) != key:
        raise ArtifactStoreError(f"artifact {key} at {where} is corrupt: its bytes no longer hash to its key")
    return data


class ArtifactBlobStore(ABC):
    """Interface of a content-addressed blob store.

    Implementations: `LocalBlobStore` and `S3BlobStore`. Build one from a URL with `open_blob_store`.
    """

    @abstractmethod
    def put(self, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Stores ``data`` (idempotent) and returns its key (sha256 hex).

        Raises:
            ArtifactStoreError: if the blob could not be stored completely.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises:
            InvalidArtifactKeyError: for a malformed key.
            ArtifactNotFoundError: (a `KeyError`) when there is no such blob.
            ArtifactStoreError: when the store is unreachable or the blob is corrupt.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a complete blob is stored under ``key``.

        Raises:
            InvalidArtifactKeyError: for a malformed key.
            ArtifactStoreError: when the store is unreachable.
        """

    @abstractmethod
    def content_type(self, key: str) -> str:
        """The content type given at `put` (``application/octet-stream`` if unknown)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A stable URI for the blob (``file://...`` or ``s3://bucket/...``)."""


class LocalBlobStore(ArtifactBlobStore):
    """Blobs as files under ``root/ab/cd/<sha256>`` (fanned out by the first four hex digits).

    Args:
        root (`str` or `PathLike`): the folder; created if missing.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArtifactStoreError(f"cannot create artifact folder {self.root}: {e}") from e

    def path(self, key: str) -> Path:
        """Where the blob for ``key`` lives (whether or not it exists)."""
        key = check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def _meta_path(self, key: str) -> Path:
        return self.path(key).with_suffix(".meta.json")

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=dest.name[:16] + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def put(self, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        key = blob_key(data)
        dest = self.path(key)
        if dest.exists():
            return key
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # NOTE: metadata first, blob last: the blob's presence is what marks it complete.
            self._atomic_write(self._meta_path(key), json.dumps({"content_type": content_type}).encode())
            self._atomic_write(dest, data)
        except OSError as e:
            raise ArtifactStoreError(f"could not write artifact {key} under {self.root}: {e}") from e
        return key

    def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {key} in {self.root}") from None
        except OSError as e:
            raise ArtifactStoreError(f"could not read artifact {key}: {e}") from e
        return _check_integrity(key, data, str(path))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def content_type(self, key: str) -> str:
        if not self.exists(key):
            raise ArtifactNotFoundError(f"no artifact {key} in {self.root}")
        try:
            return json.loads(self._meta_path(key).read_text()).get("content_type", DEFAULT_CONTENT_TYPE)
        except (OSError, ValueError):
            return DEFAULT_CONTENT_TYPE

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()


class S3BlobStore(ArtifactBlobStore):
    """Blobs as objects ``<prefix><sha256>`` in an S3 or S3-compatible bucket (boto3).

    Args:
        bucket (`str`): bucket name.
        endpoint_url (`str`, *optional*): e.g. ``http://minio:9000``; None for AWS.
        prefix (`str`, *optional*, defaults to ``""``): key prefix, e.g. ``"artifacts/"``.
        region_name (`str`, *optional*): region; defaults to boto3's resolution, else ``us-east-1``.
        connect_timeout (`float`, *optional*, defaults to 5): seconds to wait for a connection.
        read_timeout (`float`, *optional*, defaults to 60): seconds to wait for a response.
        max_attempts (`int`, *optional*, defaults to 3): total tries per call (boto3 standard retries).
        create_bucket (`bool`, *optional*, defaults to False): create the bucket if it is missing.
        **client_kwargs: passed to ``boto3.client("s3", ...)`` (credentials, ``config`` ...).

    Raises:
        ArtifactStoreError: if ``create_bucket`` is set and the bucket cannot be made.
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        prefix: str = "",
        region_name: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        create_bucket: bool = False,
        **client_kwargs: Any,
    ):
        import boto3
        from botocore.config import Config

        if not bucket:
            raise ValueError("S3 bucket name is required")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        if "config" in client_kwargs:
            config = config.merge(client_kwargs.pop("config"))
        region = region_name or client_kwargs.pop("region_name", None) or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **client_kwargs)
        if create_bucket:
            self.ensure_bucket()

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}{check_key(key)}"

    def _error(self, action: str, key: str | None, e: Exception) -> ArtifactStoreError:
        from botocore.exceptions import ClientError

        what = f"artifact {key}" if key else "bucket"
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "?")
            msg = e.response.get("Error", {}).get("Message", "")
            return ArtifactStoreError(f"S3 refused to {action} {what} in {self._where()}: {code} {msg}".rstrip())
        return ArtifactStoreError(f"S3 store {self._where()} is unreachable; could not {action} {what}: {e}")

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist.

        Raises:
            ArtifactStoreError: if the endpoint is unreachable or refuses.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error("open", None, e) from e
        except BotoCoreError as e:
            raise self._error("open", None, e) from e
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise self._error("create", None, e) from e

    def put(self, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        key = blob_key(data)
        if self.exists(key):
            return key
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._object_key(key),
                Body=data,
                ContentType=content_type,
                ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            )
        except (ClientError, BotoCoreError) as e:
            raise self._error("store", key, e) from e
        return key

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        obj_key = self._object_key(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=obj_key)
            data = resp["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFoundError(f"no artifact {key} in {self._where()}") from None
            raise self._error("read", key, e) from e
        except BotoCoreError as e:
            raise self._error("read", key, e) from e
        return _check_integrity(key, data, f"s3://{self.bucket}/{obj_key}")

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("look up", key, e) from e
        except BotoCoreError as e:
            raise self._error("look up", key, e) from e

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def content_type(self, key: str) -> str:
        head = self._head(key)
        if head is None:
            raise ArtifactNotFoundError(f"no artifact {key} in {self._where()}")
        return head.get("ContentType") or DEFAULT_CONTENT_TYPE

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A time-limited HTTP(S) GET URL for the blob (no network call)."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=expires_s
        )


def open_blob_store(url: str, **kwargs: Any) -> ArtifactBlobStore:
    """Builds a store from a URL.

    ``file:///abs/path`` or a plain path -> `LocalBlobStore`;
    ``s3://bucket/prefix?endpoint_url=http://host:9000&region=us-east-1`` -> `S3BlobStore`.

    Args:
        url (`str`): the store URL.
        **kwargs: extra `S3BlobStore` arguments.

    Raises:
        ValueError: for an unsupported scheme.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(parsed.path if parsed.scheme == "file" else url)
    if parsed.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3BlobStore(
            parsed.netloc,
            endpoint_url=query.get("endpoint_url"),
            prefix=prefix,
            region_name=query.get("region"),
            **kwargs,
        )
    raise ValueError(f"unsupported artifact store URL {url!r}; use a path, file:// or s3://")
