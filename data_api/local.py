"""`alien serve` in a child process on a free loopback port (tests, benchmarks, scripts)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from alien.local_servers import free_port


class LocalServer:
    """Starts ``alien serve`` and waits until ``/v1/ready`` answers 200 (model loaded).

    The server's output goes to ``log``; if it exits or is not ready within ``timeout``
    seconds, ``RuntimeError`` carries that log. Leaving the ``with`` block stops it.
    """

    def __init__(self, env: dict[str, str], log: Path, timeout: float = 120.0) -> None:
        self.env = env
        self.log = log
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        alien = Path(sys.executable).with_name("alien")
        with self.log.open("w") as out:
            self._proc = subprocess.Popen(
                [str(alien), "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"alien serve exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        log = self.log.read_text()
        raise RuntimeError(f"alien serve not ready after {self.timeout:.0f} s:\n{log}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
