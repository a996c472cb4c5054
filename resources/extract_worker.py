"""Extraction and OCR of one document at a time, in a child process with bounded memory and time.

A hostile document that gets past every cap checked before reading (pixels, pages, inflated
size) can still ask a parser for more than the server has. So the pipeline reads documents in
a child process whose address space is limited (``RLIMIT_AS``, inherited by the Tesseract
processes it starts) and gives each document a wall-time budget: a document over either ends
``failed`` with the cap named, the child is replaced, and the next document goes on.

One child serves a whole step, document after document (starting Python per document would
cost more than most text files take to read); it is started when first needed and again after
it was killed. It talks to the parent over a socket pair, like the embedding worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from resources.child_process import ParentLink, die_with_parent, reap, start_child
from resources.extract import DocumentLimits, ExtractionError, PageText, extract_pages
from resources.ocr import OcrEngine

MODULE = "resources.extract_worker"
_INTERRUPT_POLL_S = 0.5
# Exit status of a child that ran out of memory in Python (a MemoryError it could report).
_OUT_OF_MEMORY = 3


class ExtractionCrash(RuntimeError):
    """The child failed in a way nobody foresaw; the message is for the service log."""


@dataclass(frozen=True)
class ExtractionJob:
    """What the child needs besides the file: the same for every document of a step."""

    ocr: OcrEngine
    ocr_dpi: int
    max_text_bytes: int
    limits: DocumentLimits


class BoundedExtractor:
    """``extract`` reads one document in the child, within ``memory_mb`` and ``seconds``."""

    def __init__(
        self,
        job: ExtractionJob,
        *,
        memory_mb: int,
        seconds: float,
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self.memory_mb = memory_mb
        self.seconds = seconds
        # Called about twice a second while a document is read; if it raises, the reading
        # is abandoned (the child killed) and the exception goes to the caller.
        self.interrupt = interrupt
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.restarts = 0  # children replaced after a cap or a crash
        self._deadline: float | None = None  # of the document being read, if one is

    def __enter__(self) -> BoundedExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extract(
        self, path: Path, media_type: str, ocr_languages: str | None = None
    ) -> list[PageText]:
        """The document's pages; ``ocr_languages`` overrides the job's OCR languages (a
        dataset's own)."""
        self.submit(path, media_type, ocr_languages)
        return self.result()

    def submit(self, path: Path, media_type: str, ocr_languages: str | None = None) -> None:
        """Start reading a document in the child; ``result`` waits for its pages (the time
        cap counts from here). The caller can do other work meanwhile, such as recording
        the previous document; the file must stay in place until ``result`` returns."""
        if self._deadline is not None:
            raise RuntimeError("a document is being read: take its result first")
        conn = self._connection()
        try:
            conn.send((str(path), media_type, ocr_languages))
        except OSError:
            raise ExtractionError(self._died()) from None
        self._deadline = time.monotonic() + self.seconds

    def result(self) -> list[PageText]:
        """The pages of the document ``submit`` sent, within its caps."""
        if self._deadline is None or self._conn is None:
            raise RuntimeError("no document is being read")
        conn = self._conn
        try:
            answered = self._answered(conn, self._deadline)
        finally:
            self._deadline = None
        if not answered:
            self._kill()
            raise ExtractionError(
                f"reading the document took longer than the cap of {self.seconds:g} s per "
                "entry (ALIEN_MAX_SECONDS_PER_ENTRY)"
            )
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            raise ExtractionError(self._died()) from None
        if kind == "pages":
            return list(value)
        if kind == "error":
            raise ExtractionError(value)
        if kind == "memory":
            self._kill()
            raise ExtractionError(self._over_memory())
        raise ExtractionCrash(value)

    def _answered(self, conn: Connection, deadline: float) -> bool:
        """Wait for the child's answer until ``deadline``, polling ``interrupt``. An answer
        already waiting is taken even past the deadline: the time was the caller's."""
        while True:
            left = deadline - time.monotonic()
            if conn.poll(max(0.0, min(left, _INTERRUPT_POLL_S))):
                return True
            if left <= 0:
                return False
            if self.interrupt is not None:
                try:
                    self.interrupt()
                except BaseException:
                    self._kill()
                    raise

    def abandon(self) -> None:
        """Stop reading the submitted document, if one is being read: the child (and the
        Tesseract processes it started) killed at once, before its file goes away."""
        if self._deadline is not None:
            self._deadline = None
            self._kill()

    def close(self) -> None:
        """End the child (it exits on end of input; killed if it is still reading a
        document) and reap it."""
        self.abandon()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            reap(self._proc)
            self._proc = None

    def _connection(self) -> Connection:
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # it died between documents (killed from outside): a new one
        if self._conn is None:
            self._proc, self._conn = start_child(
                MODULE, [str(self.memory_mb)], new_session=True, minimal_env=True
            )
            self._conn.send(self.job)
        return self._conn

    def _kill(self) -> None:
        """Kill the child and whatever it started (its own process group), and reap it."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self.close()
        self.restarts += 1

    def _died(self) -> str:
        proc = self._proc
        self._kill()  # what it started goes too, before it is reaped
        code = proc.returncode if proc is not None else None
        if code == _OUT_OF_MEMORY:
            return self._over_memory()
        how = f"signal {signal_name(-code)}" if code and code < 0 else f"status {code}"
        return (
            f"the document reader died ({how}) while reading the document, within its memory "
            f"cap of {self.memory_mb:,} MB (ALIEN_EXTRACT_MEMORY_MB): the file is malformed or "
            "needs more memory than the cap"
        )

    def _over_memory(self) -> str:
        return (
            f"reading the document needed more than the cap of {self.memory_mb:,} MB of memory "
            "(ALIEN_EXTRACT_MEMORY_MB)"
        )


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def serve(fd: int, memory_mb: int) -> None:
    """Child side: bound this process's memory, then read documents until the parent hangs up."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    parent = ParentLink(fd)
    job: ExtractionJob = parent.request()
    while True:
        path, media_type, ocr_languages = parent.request()
        try:
            pages = list(
                extract_pages(
                    Path(path),
                    media_type,
                    ocr=job.ocr.in_languages(ocr_languages) if ocr_languages else job.ocr,
                    ocr_dpi=job.ocr_dpi,
                    max_text_bytes=job.max_text_bytes,
                    limits=job.limits,
                )
            )
        except ExtractionError as err:
            parent.reply("error", str(err))
        except MemoryError:
            parent.reply("memory", None)
            os._exit(_OUT_OF_MEMORY)
        except Exception as err:
            parent.reply("crash", f"{type(err).__name__}: {err}")
        else:
            parent.reply("pages", pages)


if __name__ == "__main__":
    import sys

    die_with_parent(int(sys.argv[1]))
    serve(int(sys.argv[2]), int(sys.argv[3]))
