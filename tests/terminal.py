"""A command run in a pseudo-terminal, as a user at a terminal runs it: the screen it draws is
read while it runs (with the time each piece arrived), and signals reach its process group
the way Ctrl-C does."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import threading
import time
from pathlib import Path


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, columns: int = 100) -> None:
        self.started = time.monotonic()
        self.chunks: list[tuple[float, str]] = []
        master, slave = pty.openpty()
        self._master = master
        env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "40"}
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            self.chunks.append((time.monotonic() - self.started, data.decode(errors="replace")))

    def text(self) -> str:
        return "".join(chunk for _, chunk in self.chunks)

    def screen(self) -> str:
        """What was drawn, without escape sequences, carriage returns as newlines."""
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text())
        return plain.replace("\r", "\n")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.screen())
            if found:
                return found
            if self.proc.poll() is not None:
                self._reader.join(2)
                found = re.search(pattern, self.screen())
                if found:
                    return found
                raise AssertionError(f"exited ({self.proc.returncode}) before {pattern!r}:\n"
                                     f"{self.screen()[-3000:]}")  # fmt: skip
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.screen()[-3000:]}")

    def interrupt(self, sig: int = signal.SIGINT) -> None:
        """What Ctrl-C does: the signal to the whole foreground process group."""
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def descendants(self) -> set[int]:
        """The processes this one started, and theirs, by walking /proc."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        out, todo = set(), [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self._master)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
