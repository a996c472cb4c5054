"""Python child processes of this package that die with their parent.

The embedding worker and the extraction worker are both ``python -m resources.<module>``
children that talk to their parent over a socket pair with ``multiprocessing.connection``
framing. A child's first act is to watch its parent (``die_with_parent``): a parent killed
mid-run leaves nothing running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any


def import_root() -> str:
    """The directory that holds the ``resources`` package (so ``-m`` finds it)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What a child that reads untrusted documents inherits of the environment: enough to run
# Python and Tesseract, and none of the service's secrets (database URLs, keys, tokens).
MINIMAL_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TESSDATA_PREFIX")


def start_child(
    module: str, args: list[str], *, new_session: bool = False, minimal_env: bool = False
) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``python -m module <parent pid> <fd> *args``; returns it and the parent's end.

    ``new_session`` puts the child in a process group of its own, so killing the group also
    ends what the child started (Tesseract); ``minimal_env`` passes it only
    ``MINIMAL_ENVIRONMENT``.
    """
    parent, child = socket.socketpair()
    if minimal_env:
        env = {k: v for k, v in os.environ.items() if k in MINIMAL_ENVIRONMENT}
    else:
        env = dict(os.environ)
    # ``-m`` must find this package also where it is not installed (a source checkout).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [import_root(), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(os.getpid()), str(child.fileno()), *args],
        pass_fds=(child.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=env,
        start_new_session=new_session,
    )
    child.close()
    return proc, Connection(parent.detach())


WATCH_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """End this process (and, when it leads its own process group, what it started there:
    Tesseract) within half a second of its parent's death, SIGKILL included.

    Not ``PR_SET_PDEATHSIG``: Linux sends that when the *thread* that started the child
    exits, and the parent starts workers from short-lived threads (a CLI run's thread, the
    API's per-tenant threads): the worker died with the thread that happened to start it."""
    import threading

    def watch() -> None:
        import signal
        import time

        while os.getppid() == parent_pid:
            time.sleep(WATCH_SECONDS)
        if os.getpgrp() == os.getpid():  # a group of its own: take the group along
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(0)

    if os.getppid() != parent_pid:  # it died before the watch began
        os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """The child's exit status, once it has exited (killed if it takes over ``timeout``)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class ParentLink:
    """A child's end of the socket pair: requests in, ``(kind, value)`` answers out. A parent
    that has hung up ends the child at once (``os._exit``): nothing is left to flush, and
    tearing down large modules at interpreter exit takes seconds."""

    def __init__(self, fd: int) -> None:
        self._conn = Connection(fd)

    def request(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            os._exit(0)

    def reply(self, kind: str, value: object) -> None:
        try:
            self._conn.send((kind, value))
        except OSError:  # the parent has gone
            os._exit(0)
