import io

import pytest

from resources.objects import (
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectTooLargeError,
)


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "objects")


def test_put_get_stat_list_delete(store):
    result = store.put_bytes("raw/a", b"hello")
    assert result.size == 5
    assert result.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    store.put_bytes("raw/b", b"world!")
    store.put_bytes("derived/text/a.json", b"{}")
    assert store.get_bytes("raw/a") == b"hello"
    assert store.stat("raw/b").size == 6
    assert [i.key for i in store.list("raw/")] == ["raw/a", "raw/b"]
    assert store.delete("raw/a") is True
    assert store.delete("raw/a") is False
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("raw/a")
    assert store.delete_prefix("derived/") == 1
    assert [i.key for i in store.list()] == ["raw/b"]


def test_overwrite_is_atomic_and_leaves_no_temp_files(store):
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    assert store.get_bytes("k") == b"two"
    assert list((store.root / ".tmp").iterdir()) == []


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "", "a//b", "a/./b", "x\x00y"])
def test_keys_cannot_escape_the_namespace(store, key):
    with pytest.raises(InvalidObjectKeyError):
        store.put_bytes(key, b"x")


def test_oversize_stream_stores_nothing(store):
    store.put_bytes("big", b"original")
    with pytest.raises(ObjectTooLargeError):
        store.put_stream("big", io.BytesIO(b"x" * 5000), max_bytes=1000)
    assert store.get_bytes("big") == b"original"
    assert list((store.root / ".tmp").iterdir()) == []
