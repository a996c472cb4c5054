"""The embedding model in a process of its own, loaded while the caller does other work.

Importing sentence-transformers (with transformers and torch) and loading the model takes
10 to 13 s on this project's 2-core machines, mostly single-threaded Python that holds the
GIL. A background thread therefore overlaps poorly with the pipeline's own Python work
(extraction, chunking, Dagster's bookkeeping). A child process overlaps fully: it imports and
loads on one core while the parent registers, extracts and chunks on the other, and then runs
the model on every core while the parent waits for vectors.

The parent talks to it over a socket pair with ``multiprocessing.connection`` framing:
a request is a list of texts, an answer is a float32 array or an error message. The child
exits when the parent closes its end, and within half a second of the parent's death
(``die_with_parent``), so a parent killed mid-run leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resources.child_process import ParentLink, die_with_parent, reap, start_child

if TYPE_CHECKING:  # the child imports nothing before it has tied its life to the parent's
    import numpy as np

# How long the parent waits for the child to import and load before giving up, and for
# the answer to one batch (plus a second per text).
LOAD_TIMEOUT_S = 600.0
REPLY_TIMEOUT_S = 300.0


class EmbeddingWorkerError(RuntimeError):
    """The worker failed to load the model, failed on a request, or died."""


class EmbeddingWorker:
    """Client side: starts the child at once and answers ``embed`` through it."""

    def __init__(self, model: str, batch_size: int, device: str, models_dir: Path) -> None:
        from resources.embedding_backends import EmbedderSpec

        spec = EmbedderSpec.parse(model)
        if os.path.isdir(spec.model):  # a model directory relative to the caller's cwd
            model = str(EmbedderSpec(os.path.abspath(spec.model), spec.variant))
        # The child's Embedder sets the offline switches itself.
        self._proc, self._conn = start_child(
            "resources.embedding_worker",
            [model, str(batch_size), device, str(Path(models_dir).resolve())],
        )
        self._lock = threading.Lock()
        self._ready = False
        self._large_batches = False
        self._hung_up = False
        atexit.register(self.close)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._hung_up and self._proc.poll() is None

    @property
    def large_batches(self) -> bool:
        """Whether the child's engine wants large batches (a GPU); known once it is loaded."""
        if not self._ready:
            with self._lock:
                self._await_ready()
        return self._large_batches

    def _await_ready(self) -> None:
        if self._ready:
            return
        if not self._conn.poll(LOAD_TIMEOUT_S):
            self.close()
            raise EmbeddingWorkerError(f"embedding worker not ready after {LOAD_TIMEOUT_S:.0f} s")
        self._large_batches = bool(self._receive())
        self._ready = True

    def _receive(self) -> np.ndarray | None:
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError) as err:
            # Its end of the socket closed: it has exited, or is exiting (reap it).
            self._hung_up = True
            code = self._reap()
            raise EmbeddingWorkerError(f"embedding worker exited (status {code})") from err
        if kind == "error":
            raise EmbeddingWorkerError(value)
        return value

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self._await_ready()
            self._conn.send(list(texts))
            try:
                if not self._conn.poll(REPLY_TIMEOUT_S + len(texts)):
                    # Seen once in a full test run: both ends waiting on an idle socket. A
                    # batch never takes this long; the worker goes, and the step's retry
                    # loads the model again rather than wait forever.
                    raise EmbeddingWorkerError(
                        f"embedding worker gave no answer in {REPLY_TIMEOUT_S + len(texts):.0f} s"
                    )
                vectors = self._receive()
            except BaseException:
                # Interrupted between a request and its reply (KeyboardInterrupt, a signal
                # handler's exception): the next reply on the socket would answer the wrong
                # request, so the worker goes; the next call starts another.
                if not self._hung_up:
                    self.kill()
                raise
        assert vectors is not None
        return vectors

    def kill(self) -> None:
        """End the child now (mid-request included) and reap it."""
        self._hung_up = True
        if self._proc.poll() is None:
            self._proc.kill()
        self.close()

    def close(self) -> None:
        """End the child (it exits on end of input) and reap it."""
        if self._conn.closed:
            return
        self._conn.close()
        self._reap()

    def _reap(self) -> int:
        return reap(self._proc)


def serve(fd: int, model: str, batch_size: int, device: str, models_dir: str) -> None:
    """Child side: load the model, then answer requests until the parent hangs up."""
    parent = ParentLink(fd)
    from resources.embedder import Embedder

    embedder = Embedder(
        model=model, batch_size=batch_size, device=device, worker=False, models_dir=Path(models_dir)
    )
    try:
        embedder.embed(["warm up"])
    except Exception as err:  # the parent raises it on its first request
        parent.reply("error", f"embedding model failed to load: {type(err).__name__}: {err}")
        os._exit(1)
    parent.reply("ready", embedder.engine_batch_size > batch_size)
    while True:
        texts = parent.request()
        try:
            vectors = embedder.embed(texts)
        except Exception as err:
            parent.reply("error", f"{type(err).__name__}: {err}")
        else:
            parent.reply("vectors", vectors)


if __name__ == "__main__":
    import signal

    # Ctrl-C at a terminal reaches the whole process group: the parent decides when this
    # worker stops (it closes the socket, or kills it), never the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(int(sys.argv[1]))
    serve(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
