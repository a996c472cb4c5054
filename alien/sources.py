"""Where `alien ingest` finds files: local files and folders, and ``s3://bucket/prefix`` on any
S3 endpoint. Both give the same thing, a list of files with a source URI, a name, a size and a
modification time, so that registration (``alien.documents.register_source``) treats them
alike: an unchanged file (same size and time) is not even read, a changed one is read once,
and ``--sync`` retires the URIs under the source's prefix that the listing no longer holds.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import urlsplit


class SourceError(ValueError):
    """A source that cannot be listed (bad URI, unknown bucket, refused credentials)."""


@dataclass(frozen=True)
class SourceFile:
    uri: str
    name: str  # the path below the source's root: shown to users, and its extension counts
    size: int
    mtime_ns: int | None
    open: Callable[[], BinaryIO] = field(repr=False)
    # Called once the file is registered: frees what reading it took (an S3 download).
    release: Callable[[], None] = field(default=lambda: None, repr=False)


@dataclass(frozen=True)
class S3Credentials:
    endpoint: str | None = None  # URL or host:port; None: AWS
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


# -- local ------------------------------------------------------------------------------------
def path_uri(path: Path) -> str:
    """The source URI of a local file or folder: its absolute path."""
    return f"file://{Path(path).resolve()}"


def local_files(root: Path) -> Iterator[SourceFile]:
    """A file, or a folder's files recursively (hidden ones left out), in path order."""
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if not _hidden(relative):
                yield _local(path, relative)
    elif root.is_file():
        yield _local(root, root.name)
    else:
        raise SourceError(f"no such file or directory: {root}")


def _local(path: Path, name: str) -> SourceFile:
    st = path.stat()
    return SourceFile(
        uri=path_uri(path),
        name=name,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        open=lambda: path.open("rb"),
    )


def local_prefix(root: Path) -> str | None:
    """The URI prefix ``--sync`` retires under: a folder's; None for a single file."""
    return path_uri(root) + "/" if root.is_dir() else None


# -- S3 ---------------------------------------------------------------------------------------
def parse_s3(location: str) -> tuple[str, str]:
    """(bucket, key prefix) of ``s3://bucket/prefix``."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise SourceError(f"not an S3 location (s3://bucket/prefix): {location!r}")
    return parts.netloc, parts.path.lstrip("/")


def s3_client(credentials: S3Credentials) -> Any:
    from minio import Minio

    endpoint = credentials.endpoint or "s3.amazonaws.com"
    secure = True
    if "://" in endpoint:
        split = urlsplit(endpoint)
        secure, endpoint = split.scheme == "https", split.netloc
    return Minio(
        endpoint,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        region=credentials.region,
        secure=secure,
    )


class S3Files:
    """The objects under ``s3://bucket/prefix``, listed once. An object is fetched only when
    registration reads it (a new or changed one), once, into a temporary file that stays for
    the second read (hash, then store) and the look inside ZIP and OLE containers; ``close``
    removes the temporary files."""

    def __init__(self, location: str, credentials: S3Credentials) -> None:
        self.bucket, self.prefix = parse_s3(location)
        self.client = s3_client(credentials)
        self._spool = tempfile.TemporaryDirectory(prefix="alien-s3-")
        self._names = itertools.count()
        self.fetched = 0  # objects downloaded: unchanged ones are not

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def sync_prefix(self) -> str:
        return self.uri(self.prefix)

    def files(self) -> Iterator[SourceFile]:
        from minio.error import S3Error

        try:
            objects = list(
                self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True)
            )
        except S3Error as err:
            raise SourceError(
                f"cannot list {self.sync_prefix}: {err.code}: {err.message}"
            ) from None
        for obj in sorted(objects, key=lambda o: o.object_name):
            key = obj.object_name
            relative = key[len(self.prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]
            if key.endswith("/") or _hidden(relative):
                continue
            modified = obj.last_modified
            local = Path(self._spool.name) / str(next(self._names))
            yield SourceFile(
                uri=self.uri(key),
                name=relative,
                size=obj.size or 0,
                mtime_ns=int(modified.timestamp() * 1e9) if modified else None,
                open=self._opener(key, local),
                release=lambda local=local: local.unlink(missing_ok=True),
            )

    def _opener(self, key: str, local: Path) -> Callable[[], BinaryIO]:

        def open_object() -> BinaryIO:
            if not local.exists():
                response = self.client.get_object(self.bucket, key)
                try:
                    with local.open("wb") as out:
                        shutil.copyfileobj(response, out, 1024 * 1024)
                finally:
                    response.close()
                    response.release_conn()
                self.fetched += 1
            handle: IO[bytes] = local.open("rb")
            return handle  # type: ignore[return-value]

        return open_object

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._spool.cleanup()
