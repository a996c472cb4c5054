"""Every `alien` command speaks JSON with --json: its output on success parses as JSON, and so
does its error (`{"error": {"code", "message"}}`, non-zero exit). The table below must name
every command: a new command without a case fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from alien.cli import main
from alien.local_servers import free_port

ALIEN = str(Path(sys.executable).with_name("alien"))


def _without_settings() -> dict[str, str]:
    """This environment without ALIEN_ settings, but for the session's models directory
    (the model's ONNX export is made once per test session)."""
    kept = ("ALIEN_MODELS_DIR",)
    return {k: v for k, v in os.environ.items() if not k.startswith("ALIEN_") or k in kept}


def commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with tenant acme holding two small text entries, and a tiny BEIR collection."""
    root = tmp_path_factory.mktemp("json")
    docs = root / "docs"
    docs.mkdir()
    (docs / "tunnel.txt").write_text("The wind tunnel runs on Tuesdays at supersonic speed.")
    (docs / "plate.md").write_text("# Plates\n\nA heated flat plate in laminar flow.")
    beir = root / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": f"d{i}", "text": t}) for i, t in enumerate(
            ["wind tunnel tests", "flat plate heat transfer", "boundary layer separation"]))
    )  # fmt: skip
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "wind tunnel"}))
    (beir / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    env = {"ALIEN_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "home" / "dagster"),
           "ALIEN_SERVICE_TOKEN_SECRET": "x" * 40}  # fmt: skip
    return {"root": root, "docs": docs, "beir": beir, "env": env}


def invoke(env: dict[str, str], *args: str) -> tuple[int, Any]:
    cleared = {k: None for k in os.environ if k.startswith("ALIEN_") and k != "ALIEN_MODELS_DIR"}
    result = CliRunner().invoke(main, [*args, "--json"], env={**cleared, **env})
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"alien {' '.join(args)} --json printed: {result.output!r}") from None


def test_every_command_answers_json_on_success_and_on_error(world: dict[str, Any]) -> None:
    env, docs = world["env"], world["docs"]
    seen: set[tuple[str, ...]] = set()

    def ok(*args: str) -> Any:
        code, data = invoke(env, *args)
        assert code == 0 and "error" not in data, (args, code, data)
        seen.add(_command_of(args))
        return data

    ingested = ok("ingest", str(docs), "-t", "acme")
    assert ingested["entries"]["new"] == 2
    ok("search", "wind tunnel", "-t", "acme")
    entries = ok("entries", "-t", "acme")["entries"]
    ok("text", entries[0]["entry_id"], "-t", "acme")
    ok("check", "-t", "acme")
    assert ok("repair", "-t", "acme")["passed"] is True
    ok("tenants")
    ok("tenant", "create", "beta")
    ok("tenant", "manifests", "acme")
    ok("tenant", "delete", "beta")
    key = ok("keys", "create", "-t", "acme")
    ok("keys", "list", "-t", "acme")
    ok("keys", "revoke", key["key_id"], "-t", "acme")
    ok("service-token", "-t", "acme", "--user", "alice")
    ok("audit", "-t", "acme")
    ok("audit")  # the cluster's log, empty: an empty list, not an error
    ok("status")
    ok("eval", str(world["beir"]))
    ok("demo", "--source", str(docs), "--tenant", "demo")
    ok("delete", entries[1]["entry_id"], "-t", "acme")
    seen.add(("serve",))  # a server: tests below
    seen.add(("tenant", "env"))  # cluster mode: tested below
    assert seen == set(commands()), set(commands()) - seen

    # Errors: every command refuses an unknown option in JSON (a usage error, exit 2)...
    for command in commands():
        code, data = invoke(env, *command, "--no-such-option")
        assert code == 2 and data["error"]["code"] == "usage", (command, data)
        assert "no-such-option" in data["error"]["message"]
    # ...and a failure is JSON too, with its reason
    for args, code_name in [
        (("search", "wind", "-t", "Bad_Name"), "usage"),
        (("search", "  ", "-t", "acme"), "usage"),
        (("text", "no-such-entry", "-t", "acme"), "failed"),
        (("entries", "-t", "nosuch"), "usage"),
        (("ingest", str(docs / "missing"), "-t", "acme"), "usage"),
        (("eval", str(docs)), "failed"),
        (("tenant", "env", "acme"), "failed"),  # embedded mode: no data plane
    ]:
        code, data = invoke(env, *args)
        assert code != 0 and data["error"]["code"] == code_name, (args, data)
        assert data["error"]["message"]


def _command_of(args: tuple[str, ...]) -> tuple[str, ...]:
    return (args[0], args[1]) if args[0] in ("tenant", "keys") else (args[0],)


def test_version() -> None:
    run = subprocess.run([ALIEN, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("alien, version ")


def test_serve_json_says_where_it_listens(world: dict[str, Any]) -> None:
    port = free_port()
    env = _without_settings()
    proc = subprocess.Popen(
        [ALIEN, "serve", "--port", str(port), "--no-worker", "--json"],
        env={**env, **world["env"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["serving"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        line = ""
        while "Uvicorn running" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert json.loads(line)["level"] == "INFO"  # its own log lines are JSON
    finally:
        proc.terminate()
        proc.wait(30)


def test_tenant_env_json_in_cluster_mode(control: dict[str, str]) -> None:
    env = control
    code, created = invoke(env, "tenant", "create", "jsonenv")
    assert code == 0, created
    try:
        code, data = invoke(env, "tenant", "env", "jsonenv")
        assert code == 0 and data["config"]["ALIEN_TENANT"] == "jsonenv", data
    finally:
        invoke(env, "tenant", "delete", "jsonenv")


def test_tables_keep_ids_whole_and_commands_take_unique_prefixes(world: dict[str, Any]) -> None:
    """At 80 columns, `alien entries` and `alien keys list` show ids whole, so they can be
    pasted; `text`, `delete` and `keys revoke` take a unique prefix; `audit` fits."""
    env = _without_settings()
    env = {**env, **world["env"], "COLUMNS": "80"}

    def alien(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ALIEN, *args], env=env, capture_output=True, text=True, timeout=300)

    assert alien("ingest", str(world["docs"]), "-t", "wide").returncode == 0
    _, listed = invoke(world["env"], "entries", "-t", "wide")
    shown = alien("entries", "-t", "wide").stdout
    for entry in listed["entries"]:
        assert entry["entry_id"] in shown  # whole, on one line
    assert max(len(line) for line in shown.splitlines()) <= 80
    first = listed["entries"][0]["entry_id"]
    page = alien("text", first[:8], "-t", "wide")
    assert page.returncode == 0 and "--- page 1" in page.stdout
    assert alien("text", "zzzz", "-t", "wide").returncode != 0
    _, key = invoke(world["env"], "keys", "create", "-t", "wide")
    keys_shown = alien("keys", "list", "-t", "wide").stdout
    assert key["key_id"] in keys_shown
    revoked = alien("keys", "revoke", key["key_id"][:6], "-t", "wide")
    assert revoked.returncode == 0, revoked.stderr
    audit = alien("audit", "-t", "wide").stdout
    assert "revoke_key" in audit and "…" not in audit
    assert max(len(line) for line in audit.splitlines()) <= 80


def test_every_command_and_option_has_help() -> None:
    for path in commands():
        command: click.Command = main
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"alien {' '.join(path)} {param.opts[0]} has no help"


def test_eval_in_a_fresh_process_scores_duplicate_documents(tmp_path: Path) -> None:
    """`alien eval` as a user starts it (a new process: its embedding worker is started from
    the run's thread), on a collection holding two byte-identical documents: both are
    retrieved, and its scratch tenant is gone afterwards."""
    beir = tmp_path / "beir"
    beir.mkdir()
    texts = ["wind tunnel tests at supersonic speed", "flat plate heat transfer",
             "boundary layer separation", "wind tunnel tests at supersonic speed"]  # fmt: skip
    (beir / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": f"d{i}", "text": t}) for i, t in enumerate(texts))
    )
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "wind tunnel"}))
    (beir / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    env = _without_settings()
    env.update(ALIEN_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "home" / "dagster"))
    run = subprocess.run(
        [ALIEN, "eval", str(beir), "--run-dir", str(tmp_path / "runs"), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["modes"]["keyword"]["ndcg@10"] > 0.5
    ranked = [
        line.split()[2] for line in (tmp_path / "runs" / "keyword.run").read_text().splitlines()
    ]
    assert set(ranked[:2]) == {"d0", "d3"}  # the shared entry stands for both
    assert result["tenant_kept"] is False
