"""The one image: its Dockerfile lints clean, keeps the contract the Kubernetes objects rely on,
and what its `pip install .` installs carries every file the code reads at run time.

No Docker daemon runs here, so the image itself is not built in the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from resources.kube import HOME_MOUNT
from tests.conftest import REPO
from tests.test_helm_chart import render, value_set

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


def _copy_sources(source: Path) -> None:
    """What the build stage copies from the checkout, into ``source`` (no caches)."""
    import shutil

    source.mkdir()
    for name in _copied_sources():
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)


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
    # The chart's operator runs its handlers by path, from where the image puts them; its
    # code server imports the pipeline's module.
    deployments = {
        d["metadata"]["name"].rsplit("-", 1)[-1]: d["spec"]["template"]["spec"]["containers"][0]
        for d in render(value_set("minimal"))
        if d["kind"] == "Deployment"
    }
    handlers = next(a for a in deployments["operator"]["args"] if a.endswith("handlers.py"))
    assert handlers == "/app/operator/handlers.py" and (REPO / "operator/handlers.py").is_file()
    args = deployments["location"]["args"]
    assert args[:3] == ["dagster", "code-server", "start"]
    assert args[args.index("--module-name") + 1] == "alien_assets"


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

    source, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    # What the image copies before `pip install .`, built outside the checkout (no build/).
    _copy_sources(source)
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


def _build_stage_runs() -> list[str]:
    """The shell commands of the build stage, in order (up to the second FROM)."""
    runs, stages = [], 0
    for kind, arg in _instructions():
        if kind == "FROM":
            stages += 1
            if stages > 1:
                break
        elif kind == "RUN":
            runs.append(arg)
    return runs


@pytest.mark.slow
def test_the_build_stage_installs_in_a_clean_venv(tmp_path: Path) -> None:
    """The image's install steps, run as written in a clean directory: the venv, torch first,
    `pip install .` of exactly what the Dockerfile copies, the model check. PyTorch's own
    index cannot be reached here, so its `--index-url` is left out: the machine's index serves
    the same CPU build."""

    venv = tmp_path / "opt-alien"
    source = tmp_path / "src"
    _copy_sources(source)
    args = dict(a.split("=", 1) for kind, a in _instructions() if kind == "ARG" and "=" in a)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TORCH_VERSION": args["TORCH_VERSION"],
           "TORCH_VARIANT": args["TORCH_VARIANT"], "HF_HUB_OFFLINE": "1"}  # fmt: skip
    python = f"{sys.base_prefix}/bin/python3"
    for command in _build_stage_runs():
        command = re.sub(r'\s*--index-url\s+"[^"]+"', "", command)
        command = command.replace("/opt/alien", str(venv)).replace(
            "python -m venv", f"{python} -m venv"
        )
        run = subprocess.run(["bash", "-ec", command], cwd=source, env=env, capture_output=True,
                             text=True, timeout=1200)  # fmt: skip
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}{run.stderr[-4000:]}"
    # what the containers start: every component imports from the installed venv
    probe = (
        "import torch, kopf, dagster_k8s, dagster_postgres, alien_assets.launcher, data_api.app;"
        "from alien_assets.definitions import defs; print(torch.__version__)"
    )
    run = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().startswith(args["TORCH_VERSION"])
    for tool in ("alien", "kopf", "dagster"):
        assert (venv / "bin" / tool).exists(), tool
