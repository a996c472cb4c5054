"""The companion release of Dagster's own chart (webserver, daemon), configured from this
project's chart: ``helm/dagster-values.yaml`` is generated, never hand-kept, so the daemon
launches runs exactly as the instance configuration this chart renders says.

``python -m alien.chart`` renders ``helm/alien-data-cluster`` with the deployment guide's
values (``ci/minimal-values.yaml``, release ``alien-data-cluster`` in ``alien-control``) and
writes the file; a test renders again and compares. Dagster's chart itself cannot be fetched
here (no network to its repository), so what it renders from this file is not tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "alien-data-cluster"
OUTPUT = REPO / "helm" / "dagster-values.yaml"
RELEASE, NAMESPACE = "alien-data-cluster", "alien-control"
DAGSTER_CHART_VERSION = "1.13.27"  # the chart of the pinned dagster


def render(helm: Path, *value_files: Path) -> list[dict[str, Any]]:
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in value_files:
        args += ["-f", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _find(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return doc


def dagster_values(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Values for Dagster's chart that mirror this chart's rendered instance and workload."""
    instance = yaml.safe_load(_find(docs, "ConfigMap", "-dagster-instance")["data"]["dagster.yaml"])
    db = instance["storage"]["postgres"]["postgres_db"]
    operator = _find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    container = operator["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    secret = env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]
    if secret["key"] != "postgresql-password":
        raise ValueError("Dagster's chart reads the password under postgresql-password")
    username = env["DAGSTER_PG_USERNAME"]["value"]
    service = _find(docs, "Service", "-code-location")
    image, _, tag = container["image"].rpartition(":")
    ours = {"repository": image, "tag": tag, "pullPolicy": container["imagePullPolicy"]}
    # Dagster's chart mounts no writable volume for its webserver and daemon: their root
    # file system stays writable, every other restriction is this chart's.
    security = {
        "podSecurityContext": operator["securityContext"],
        "securityContext": {**container["securityContext"], "readOnlyRootFilesystem": False},
    }
    coordinator = instance["run_coordinator"]["config"]
    return {
        "global": {"postgresqlSecretName": secret["name"]},
        "postgresql": {
            "enabled": False,
            "postgresqlHost": db["hostname"],
            "postgresqlUsername": username,
            "postgresqlDatabase": db["db_name"],
            "postgresqlParams": db["params"],
            "postgresqlScheme": db["scheme"],
            "service": {"port": db["port"]},
        },
        "generatePostgresqlPasswordSecret": False,
        "telemetry": {"enabled": False},
        "imagePullSecrets": operator.get("imagePullSecrets", []),
        # The daemon and webserver load alien_assets.launcher: they run this project's image.
        "dagsterWebserver": {
            "image": ours,
            **security,
            "workspace": {
                "enabled": True,
                "servers": [
                    {
                        "host": f"{service['metadata']['name']}.{NAMESPACE}.svc",
                        "port": service["spec"]["ports"][0]["port"],
                        "name": "alien_assets",
                    }
                ],
            },
        },
        "dagster-user-deployments": {"enabled": True, "enableSubchart": False},
        "dagsterDaemon": {
            "image": ours,
            **security,
            "runMonitoring": {
                "enabled": instance["run_monitoring"]["enabled"],
                "maxResumeRunAttempts": instance["run_monitoring"]["max_resume_run_attempts"],
                "pollIntervalSeconds": instance["run_monitoring"]["poll_interval_seconds"],
            },
            "runCoordinator": {
                "enabled": True,
                "type": "QueuedRunCoordinator",
                "config": {
                    "queuedRunCoordinator": {
                        "maxConcurrentRuns": coordinator["max_concurrent_runs"],
                        "tagConcurrencyLimits": coordinator["tag_concurrency_limits"],
                    }
                },
            },
        },
        "runLauncher": {
            "type": "CustomRunLauncher",
            "config": {
                "customRunLauncher": {
                    "module": instance["run_launcher"]["module"],
                    "class": instance["run_launcher"]["class"],
                    "config": instance["run_launcher"]["config"],
                }
            },
        },
    }


HEADER = f"""\
# Values for Dagster's own chart (dagster/dagster {DAGSTER_CHART_VERSION}), installed beside
# helm/alien-data-cluster as a companion release:
#   helm install dagster dagster/dagster --version {DAGSTER_CHART_VERSION} \\
#     --namespace {NAMESPACE} -f helm/dagster-values.yaml
# Generated by `python -m alien.chart` from the chart rendered with its
# ci/minimal-values.yaml (release {RELEASE}): regenerate it from your own values file.
# The webserver and daemon run this project's image, whose run launcher sends each tenant's
# runs to its own namespace; the secret named in global.postgresqlSecretName holds Dagster's
# PostgreSQL password under the key postgresql-password.
"""


def write(helm: Path, *value_files: Path, output: Path = OUTPUT) -> Path:
    values = dagster_values(render(helm, *value_files))
    output.write_text(HEADER + yaml.safe_dump(json.loads(json.dumps(values)), sort_keys=False))
    return output


if __name__ == "__main__":
    files = [Path(a) for a in sys.argv[1:]] or [CHART / "ci" / "minimal-values.yaml"]
    print(write(REPO / ".servers" / "bin" / "helm", *files))
