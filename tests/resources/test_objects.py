"""Contract tests of the object store: the same suite against every backend that runs here
(the embedded directory; S3 through the minio client against moto's S3 server and against the
S3 gateway with MinIO's admin API)."""

import io
import uuid

import pytest

from resources.objects import (
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectTooLargeError,
)
from resources.s3objects import PART_SIZE, S3ObjectStore, s3_client


@pytest.fixture(params=["local", "s3", "minio-gateway"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects")
        return
    server = request.getfixturevalue("s3_server" if request.param == "s3" else "minio_server")
    client = s3_client(server.endpoint, server.access_key, server.secret_key, secure=False)
    s3 = S3ObjectStore(client, f"alien-test-{uuid.uuid4().hex[:12]}")
    assert s3.create() is True
    assert s3.create() is False  # idempotent
    yield s3
    s3.drop()


def _leftovers(store):
    """Partial uploads or temp files the backend might leave behind."""
    if isinstance(store, LocalObjectStore):
        return list((store.root / ".tmp").iterdir())
    uploads = store.client._list_multipart_uploads(store.bucket)
    return list(uploads.uploads or [])


def test_put_get_stat_list_delete(store):
    result = store.put_bytes("raw/a", b"hello")
    assert result.size == 5
    assert result.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    store.put_bytes("raw/b", b"world!")
    store.put_bytes("derived/text/a.json", b"{}")
    assert store.get_bytes("raw/a") == b"hello"
    assert store.stat("raw/b").size == 6
    assert store.exists("raw/b") and not store.exists("raw/zz")
    assert [i.key for i in store.list("raw/")] == ["raw/a", "raw/b"]
    with store.open("raw/b") as stream:
        assert stream.read() == b"world!"
    with store.local_path("raw/b") as path:
        assert path.read_bytes() == b"world!"
    assert store.delete("raw/a") is True
    assert store.delete("raw/a") is False
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("raw/a")
    with pytest.raises(ObjectNotFoundError):
        store.stat("raw/a")
    with pytest.raises(ObjectNotFoundError), store.local_path("raw/a"):
        pass
    assert store.delete_prefix("derived/") == 1
    assert [i.key for i in store.list()] == ["raw/b"]


def test_re_put_replaces_and_leaves_nothing_behind(store):
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    store.put_bytes("k", b"two")  # idempotent re-put
    assert store.get_bytes("k") == b"two"
    assert [i.key for i in store.list()] == ["k"]
    assert _leftovers(store) == []


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "", "a//b", "a/./b", "x\x00y"])
def test_keys_cannot_escape_the_namespace(store, key):
    with pytest.raises(InvalidObjectKeyError):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidObjectKeyError):
        store.get_bytes(key)


def test_oversize_stream_stores_nothing(store):
    store.put_bytes("big", b"original")
    with pytest.raises(ObjectTooLargeError):
        store.put_stream("big", io.BytesIO(b"x" * 5000), max_bytes=1000)
    assert store.get_bytes("big") == b"original"
    assert _leftovers(store) == []


def test_large_stream_round_trips_with_its_checksum(store):
    import hashlib

    data = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB, several read blocks
    result = store.put_stream("raw/large", io.BytesIO(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("raw/large") == data
    assert len(data) < PART_SIZE


def test_isolation_between_namespaces(store, tmp_path, request):
    """Two tenants' stores never see each other's keys."""
    if isinstance(store, LocalObjectStore):
        other = LocalObjectStore(tmp_path / "other")
    else:
        other = S3ObjectStore(store.client, store.bucket + "-b")
        other.create()
        request.addfinalizer(other.drop)
    store.put_bytes("raw/shared-name", b"mine")
    other.put_bytes("raw/shared-name", b"theirs")
    assert store.get_bytes("raw/shared-name") == b"mine"
    assert [i.key for i in other.list()] == ["raw/shared-name"]
    other.delete_prefix("")
    assert store.get_bytes("raw/shared-name") == b"mine"


def test_s3_multipart_upload_checksum_matches_the_server(s3_server, monkeypatch):
    """Past the part size the ETag is md5(part md5s)-N; ours must equal the server's."""
    import hashlib

    import resources.s3objects as s3mod

    monkeypatch.setattr(s3mod, "PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    client = s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, False)
    store = S3ObjectStore(client, f"alien-test-{uuid.uuid4().hex[:12]}")
    store.create()
    try:
        data = hashlib.sha256(b"seed").digest() * (11 * 1024 * 1024 // 32)  # 11 MiB: 3 parts
        result = store.put_stream("raw/multipart", io.BytesIO(data))
        assert result.size == len(data)
        assert client.stat_object(store.bucket, "raw/multipart").etag.endswith("-3")
        assert store.get_bytes("raw/multipart") == data
    finally:
        store.drop()


def test_s3_checksum_mismatch_is_an_error_and_keeps_nothing(s3_server, monkeypatch):
    from resources.s3objects import ObjectIntegrityError

    client = s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, False)
    store = S3ObjectStore(client, f"alien-test-{uuid.uuid4().hex[:12]}")
    store.create()
    real_put = client.put_object

    def corrupting_put(bucket, key, data, length, **kwargs):
        body = data.read()
        flipped = bytes([body[0] ^ 0xFF]) + body[1:]  # one bit-flipped byte in transit
        return real_put(bucket, key, io.BytesIO(flipped), len(flipped), **kwargs)

    monkeypatch.setattr(client, "put_object", corrupting_put)
    try:
        with pytest.raises(ObjectIntegrityError):
            store.put_bytes("raw/x", b"payload bytes")
        assert not store.exists("raw/x")
    finally:
        monkeypatch.undo()
        store.drop()
