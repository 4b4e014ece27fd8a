"""The `relay` command as an operator runs it: real subprocesses, a real database file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import relay_cli, relay_cli_async
from tests.conftest import GFX_TOKEN, LIMITED_TOKEN, LOC_ID, RelayHandle, eventually, example

COMMANDS = [
    [], ["serve"], ["migrate"], ["check-config"], ["status"], ["rejected"], ["rejected", "list"],
    ["rejected", "show"], ["rejected", "replay"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) or "relay" for c in COMMANDS])
def test_every_command_has_help(cmd: list[str]) -> None:
    res = relay_cli(*cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: relay" in res.stdout
    assert "--help" in res.stdout


def test_help_lists_every_documented_command() -> None:
    out = relay_cli("--help").stdout
    for name in ("serve", "migrate", "check-config", "status", "rejected", "dead", "replay", "pull", "tail"):
        assert f"    {name}" in out, name


def test_check_config_reports_file_and_line_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscriptions:\n  - name: x\n    token_env: NOT_SET_ANYWHERE_1234\n    cpos: [\"NL*GFX\"]\n    colour: red\n")
    res = relay_cli("check-config", str(bad))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:5:") and "colour" in line for line in lines), res.stderr
    assert any(line.startswith(f"{bad}:3:") and "NOT_SET_ANYWHERE_1234" in line for line in lines), res.stderr


def test_shipped_forwarding_yaml_checks_clean_and_masks_secrets() -> None:
    root = Path(__file__).resolve().parents[1]
    res = relay_cli("check-config", str(root / "forwarding.yaml"), "--json", env={"RELAY_TOKEN_GREENFLUX": "s3cret-value"})
    assert res.returncode == 0, res.stderr
    assert "s3cret-value" not in res.stdout
    assert json.loads(res.stdout)["subscriptions"][0]["name"] == "greenflux"


def test_bad_settings_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    res = relay_cli("status", env={"RELAY_HTTP_PORT": "eighty"})
    assert res.returncode == 2 and "RELAY_HTTP_PORT" in res.stderr


def test_migrate_then_status_json_on_a_fresh_database(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    res = relay_cli("migrate", "--database-url", db)
    assert res.returncode == 0, res.stderr
    res = relay_cli("status", "--json", "--database-url", db)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["events"] == 0 and status["last_seq"] == 0


def test_relative_sqlite_url_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    res = relay_cli("migrate", "--database-url", "sqlite:///here.db", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "here.db").exists()


async def test_rejected_list_show_replay_against_a_running_relay(
    relay: RelayHandle, config_path: Path, tokens: dict[str, str]
) -> None:
    ans = await relay.put(f"/locations/DE/XYZ/{LOC_ID}", example("location_full.json"))
    assert ans.status == 403
    env = {"RELAY_DATABASE_URL": relay.settings.database_url, "RELAY_CONFIG": str(config_path),
           "TEST_TOKEN_GFX": GFX_TOKEN, "TEST_TOKEN_LIMITED": LIMITED_TOKEN}
    listed = await relay_cli_async("rejected", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert set(entry) == {"id", "received_at", "subscription", "method", "path", "module", "http_status",
                          "status_code", "reason", "replayed_at"}
    assert entry["http_status"] == 403 and entry["replayed_at"] is None and "DE*XYZ" in entry["reason"]
    shown = json.loads((await relay_cli_async("rejected", "show", str(entry["id"]), env=env)).stdout)
    assert shown["body"]["id"] == LOC_ID
    # replay before fixing the subscription: refused again, record kept with the reason
    again = await relay_cli_async("rejected", "replay", str(entry["id"]), env=env)
    assert again.returncode == 1
    # fix the subscription, replay while the relay runs: it becomes an event with origin replay
    text = config_path.read_text()  # noqa: ASYNC240 - a tiny file in a test
    config_path.write_text(text.replace('cpos: ["NL*GFX"]', 'cpos: ["NL*GFX", "DE*XYZ"]'))  # noqa: ASYNC240
    done = await relay_cli_async("rejected", "replay", "--all", "--json", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)[0]["ok"] is True
    events = await relay.store.read_events(0, 10)
    assert [(e.origin, e.object_id) for e in events] == [("replay", LOC_ID)]

    async def visible() -> bool:  # the running relay reloads the changed file by itself
        return (await relay.get(f"/locations/DE/XYZ/{LOC_ID}")).status == 200

    await eventually(visible)
    listed = json.loads((await relay_cli_async("rejected", "list", "--json", env=env)).stdout)
    assert listed[0]["replayed_at"] is not None


def test_serve_logs_listening_ports_as_json_and_never_the_token(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RELAY_TOKEN_GREENFLUX": "very-secret-token-xyz", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
           "RELAY_CONFIG": str(root / "forwarding.yaml"), "RELAY_HTTP_PORT": "0", "RELAY_GRPC_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--no-workers"], env=env, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"http_listening"' in line:
                break
        record = json.loads(lines[-1])
        assert record["event"] == "http_listening" and record["port"] > 0
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{record['port']}/locations/NL/GFX/x", method="GET",
                                     headers={"Authorization": "Token very-secret-token-xyz"})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as err:
            assert err.code == 404
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0
    everything = "".join(lines) + rest
    assert "very-secret-token-xyz" not in everything
    for line in everything.splitlines():
        json.loads(line)  # every log line is JSON
