"""The one image: its Dockerfile lints clean, keeps the contract the Kubernetes objects rely on,
and what its `pip install .` installs carries every file the code reads at run time.

No Docker daemon runs here, so the image itself is not built in the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from resources.kube import HOME_MOUNT, operator_deployment
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _copied_sources() -> list[str]:
    """What the build stage copies from the checkout before its ``pip install .``."""
    out = []
    for kind, arg in _instructions():
        if kind == "RUN" and "pip install ." in arg:
            return out
        if kind == "COPY" and not arg.startswith("--"):
            out.extend(arg.split()[:-1])
    raise AssertionError("no `pip install .` in the Dockerfile")


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    run = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_image_keeps_the_contract_of_the_kubernetes_objects() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])  # pinned
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_VERSION"] == "2.13.0"
    assert [a for kind, a in steps if kind == "USER"] == ["10001:10001"]  # the pods' runAsUser
    env = " ".join(a for kind, a in steps if kind == "ENV")
    assert f"ALIEN_HOME={HOME_MOUNT}" in env  # the emptyDir the Deployments mount
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env
    copied = [a.split()[0] for kind, a in steps if kind == "COPY" and not a.startswith("--")]
    for source in copied:
        assert (REPO / source).exists(), source
    # The operator's Deployment runs its handlers by path, from where the image puts them.
    command = operator_deployment()["spec"]["template"]["spec"]["containers"][0]["args"]
    handlers = next(a for a in command if a.endswith("handlers.py"))
    assert handlers == "/app/operator/handlers.py" and (REPO / "operator/handlers.py").is_file()


_UPGRADE = """
import sys
from pathlib import Path
import resources
from resources.catalog import sqlite_engine
from resources.migrate import current, head, upgrade
assert Path(resources.__file__).is_relative_to(sys.argv[1]), resources.__file__
engine = sqlite_engine(Path(sys.argv[2]))
upgrade(engine)
print(current(engine), head())
"""


def test_the_installed_package_carries_its_migrations(tmp_path: Path) -> None:
    """`pip install .` (what the image runs) must ship the Alembic scripts, which are no
    importable modules: a wheel without them makes every new catalog fail."""
    import shutil

    source, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    # What the image copies before `pip install .`, built outside the checkout (no build/).
    source.mkdir()
    for name in _copied_sources():
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("alien_data_cluster-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", _UPGRADE, str(target), str(tmp_path / "catalog.db")],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    revision, newest = run.stdout.split()
    assert revision == newest is not None and revision != "None"
