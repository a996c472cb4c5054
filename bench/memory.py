"""Peak memory of `alien ingest` on one very large PDF (default 2,000 pages).

    .venv/bin/python bench/memory.py [--pages 2000] [--json]

The PDF is made of real pages so it has a text layer, fonts and images like the documents
users store: the Gri manual's 285 text pages in order, repeated, with every 100th page a
scanned page (read by OCR). `alien ingest` runs in a fresh
ALIEN_HOME; every 0.1 s the resident memory (RSS) of its whole process tree is summed (the
CLI, the embedding worker, the extraction child and any Tesseract it starts), and the peak of
that sum is reported with each process's own peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PDFS = REPO.parent / "shared" / "data" / "pdfs"
TEXT_SOURCE = PDFS / "gri-manual.pdf"
SCANNED_SOURCE = PDFS / "camlidl-manual.p8-10.scanned.pdf"
ALIEN = str(Path(sys.executable).with_name("alien"))


def make_pdf(pages: int, path: Path) -> None:
    import pypdf

    text, scanned = pypdf.PdfReader(TEXT_SOURCE), pypdf.PdfReader(SCANNED_SOURCE)
    writer = pypdf.PdfWriter()
    for n in range(pages):
        if n % 100 == 99:
            writer.add_page(scanned.pages[(n // 100) % len(scanned.pages)])
        else:
            writer.add_page(text.pages[n % len(text.pages)])
    with path.open("wb") as out:
        writer.write(out)


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _kib(value: str) -> int:
    return int(value.split()[0]) if value else 0


def measure(pages: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="alien-mem-") as tmp:
        work = Path(tmp)
        pdf = work / "docs" / f"large-{pages}.pdf"
        pdf.parent.mkdir()
        make_pdf(pages, pdf)
        pdf_mib = round(pdf.stat().st_size / 2**20, 1)
        home = work / "home"
        env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
        started = time.perf_counter()
        proc = subprocess.Popen(
            [ALIEN, "ingest", str(pdf.parent), "--tenant", "mem", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        peak_total, per_process = 0, {}
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_total
            while not done.is_set():
                total = 0
                for pid in _tree(proc.pid):
                    status = _status(pid)
                    if not status:
                        continue
                    total += _kib(status.get("VmRSS", ""))
                    name = status.get("Name", "?")
                    key = f"{name}:{pid}"
                    per_process[key] = max(per_process.get(key, 0), _kib(status.get("VmHWM", "")))
                peak_total = max(peak_total, total)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        done.set()
        sampler.join()
        seconds = time.perf_counter() - started
        summary = json.loads(out) if out.strip().startswith("{") else {"error": out[-500:]}
    return {
        "pages": pages,
        "pdf_mib": pdf_mib,
        "seconds": round(seconds, 1),
        "exit": proc.returncode,
        "chunks": summary.get("chunks"),
        "peak_tree_mib": round(peak_total / 1024, 1),
        "peak_by_process_mib": {
            k: round(v / 1024, 1) for k, v in sorted(per_process.items(), key=lambda kv: -kv[1])
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.pages)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['pages']} pages ({result['pdf_mib']} MiB), {result['chunks']} chunks, "
        f"{result['seconds']} s, exit {result['exit']}: peak of the process tree "
        f"{result['peak_tree_mib']} MiB"
    )
    for name, mib in list(result["peak_by_process_mib"].items())[:8]:
        print(f"  {name:<28} peak {mib} MiB")


if __name__ == "__main__":
    main()
