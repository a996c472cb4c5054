"""The servers the suite and `make servers` start: each answers, with its credentials."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from alien.local_servers import LocalServers


def _status(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_a_master_key_that_starts_with_a_dash_is_a_key_not_an_option(tmp_path: Path) -> None:
    """A random key once began with "-l" and Meilisearch read it as an option."""
    servers = LocalServers(tmp_path)
    try:
        servers.start_meilisearch(master_key="-l-looks-like-an-option-0123456789")
        assert _status(f"{servers.meili_url}/keys") == 401
        assert _status(f"{servers.meili_url}/keys", servers.meili_master_key) == 200
        (process,) = servers.processes
    finally:
        servers.stop()
    assert process.proc.poll() is not None  # stopped, not left running


@pytest.mark.parametrize("path", ["/collections"])
def test_qdrant_needs_its_key(servers: LocalServers, path: str) -> None:
    assert _status(servers.qdrant_url + path) == 401
    request = urllib.request.Request(
        servers.qdrant_url + path, headers={"api-key": servers.qdrant_api_key}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
