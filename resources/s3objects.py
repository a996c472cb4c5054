"""Object storage on S3 (MinIO or any S3-protocol server) through the ``minio`` client.

One bucket per tenant. Keys are made by the server (``alien/layout.py``) and checked like the
embedded store's. Uploads stream through a spool file that also hashes them, so an oversize
stream stores nothing, and the ETag the server returns is checked against the MD5 computed
on the way (the multipart form ``md5(part md5s)-N`` included): a corrupted upload is an
error, not a silent object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError

from resources.objects import (
    InvalidObjectKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PutResult,
    check_key,
)

PART_SIZE = 64 * 1024 * 1024
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound"}


class ObjectIntegrityError(IOError):
    """The server's checksum of an upload differs from the bytes sent."""


def bucket_name(tenant: str, prefix: str = "alien") -> str:
    """The tenant's bucket: ``<prefix>-<tenant>`` (tenant ids are valid bucket characters)."""
    return f"{prefix}-{tenant}"


def s3_client(endpoint: str, access_key: str, secret_key: str, secure: bool) -> Minio:
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)


class S3ObjectStore:
    """Objects of one tenant in its own bucket (cluster backend)."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    # -- provisioning --------------------------------------------------------------------
    def create(self) -> bool:
        """Create the bucket if missing (idempotent); True when it was created now."""
        if self.client.bucket_exists(self.bucket):
            return False
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as err:
            if err.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise
        return True

    def drop(self) -> bool:
        """Remove every object and the bucket (idempotent)."""
        if not self.client.bucket_exists(self.bucket):
            return False
        self.delete_prefix("")
        # Servers that keep objects in a file system (MinIO's gateway and FS modes) list an
        # emptied directory as a "prefix/" entry and refuse to remove a bucket that has one;
        # removing the deepest ones uncovers their parents, so repeat to the key depth.
        for _ in range(64):
            left = [o.object_name for o in self.client.list_objects(self.bucket, recursive=True)]
            if not left:
                break
            for name in left:
                self.client.remove_object(self.bucket, name)
        self.client.remove_bucket(self.bucket)
        return True

    # -- writes --------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> PutResult:
        return self.put_stream(key, io.BytesIO(data))

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> PutResult:
        check_key(key)
        sha256 = hashlib.sha256()
        part_md5s: list[bytes] = []
        part = hashlib.md5(usedforsecurity=False)
        in_part = size = 0
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            while block := stream.read(1024 * 1024):
                size += len(block)
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLargeError(f"object exceeds {max_bytes} bytes")
                sha256.update(block)
                spool.write(block)
                while block:  # MD5 per part, as S3 computes multipart ETags
                    take = block[: PART_SIZE - in_part]
                    part.update(take)
                    in_part += len(take)
                    block = block[len(take) :]
                    if in_part == PART_SIZE:
                        part_md5s.append(part.digest())
                        part, in_part = hashlib.md5(usedforsecurity=False), 0
            if in_part or not part_md5s:
                part_md5s.append(part.digest())
            spool.seek(0)
            result = self.client.put_object(
                self.bucket,
                key,
                spool,
                length=size,
                part_size=PART_SIZE,
                metadata={"sha256": sha256.hexdigest()},
            )
        expected = (
            part_md5s[0].hex()
            if len(part_md5s) == 1
            else f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-"
            f"{len(part_md5s)}"
        )
        etag = (result.etag or "").strip('"')
        if etag != expected:
            with contextlib.suppress(S3Error):
                self.client.remove_object(self.bucket, key)
            raise ObjectIntegrityError(f"{key}: server ETag {etag!r}, expected {expected!r}")
        return PutResult(key=key, size=size, sha256=sha256.hexdigest())

    # -- reads ---------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        check_key(key)
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as err:
            raise _translate(err, key) from None
        try:
            yield response  # type: ignore[misc]
        finally:
            response.close()
            response.release_conn()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A temporary local copy, removed afterwards (extractors need a seekable file)."""
        with tempfile.TemporaryDirectory(prefix="alien-s3-") as tmp:
            path = Path(tmp) / "object"
            with self.open(key) as stream, path.open("wb") as out:
                while block := stream.read(1024 * 1024):
                    out.write(block)
            yield path

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as err:
            raise _translate(err, key) from None
        modified = st.last_modified.timestamp() if st.last_modified else 0.0
        return ObjectInfo(key=key, size=int(st.size or 0), mtime_ns=int(modified * 1e9))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a folder prefix ending in '/'), by key."""
        if prefix:
            if not prefix.endswith("/"):
                raise InvalidObjectKeyError("list() takes a folder prefix ending in '/'")
            check_key(prefix.rstrip("/"))
        for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
            if obj.object_name is None or obj.is_dir:
                continue
            modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
            yield ObjectInfo(obj.object_name, int(obj.size or 0), int(modified * 1e9))

    # -- deletes -------------------------------------------------------------------------
    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self.client.remove_object(self.bucket, key)
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(k) for k in keys[start : start + 1000]]
            errors = list(self.client.remove_objects(self.bucket, batch))
            if errors:
                raise OSError(f"could not delete {len(errors)} objects: {errors[0]}")
        return len(keys)


def _translate(err: S3Error, key: str) -> Exception:
    if err.code in _MISSING:
        return ObjectNotFoundError(key)
    return err


def unavailable(err: BaseException) -> str | None:
    """Why the S3 server did not answer, if ``err`` says so (``resources.outages``): no
    connection, a reset or timed-out one, or a 5xx answer (SlowDown included)."""
    import urllib3.exceptions

    if isinstance(err, urllib3.exceptions.HTTPError):  # MaxRetryError, ProtocolError, ...
        return str(getattr(err, "reason", None) or err)
    if isinstance(err, ServerError) and err.status_code >= 500:
        return f"S3 answered {err.status_code}"
    if isinstance(err, S3Error) and err.code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return f"S3 answered {err.code}"
    return None
