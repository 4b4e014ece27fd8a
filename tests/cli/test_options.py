"""Every setting is a flag of `relay serve` and a row of the README, and the other way round."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from relay.cli.main import build_parser
from relay.cli.options import settings_from_args
from relay.settings import Settings
from tests.commands import relay_cli

README = Path(__file__).resolve().parents[2] / "README.md"
FIELDS = [f.name for f in dataclasses.fields(Settings)]


def _serve_flags() -> set[str]:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {opt for action in serve._actions for opt in action.option_strings} - {"-h", "--help"}


def test_every_setting_is_a_serve_flag_and_every_flag_a_setting() -> None:
    expected = {f"--no-{n}" if isinstance(getattr(Settings(), n), bool) else f"--{n}" for n in FIELDS}
    assert _serve_flags() == {e.replace("_", "-") for e in expected}


def test_every_setting_is_in_the_readme_table() -> None:
    table = README.read_text()
    rows = set(re.findall(r"`(RELAY_[A-Z_]+)`", table[table.index("## Configure"):table.index("## Operate")]))
    assert rows == {f"RELAY_{n.upper()}" for n in FIELDS}


def test_help_shows_each_flag_with_its_env_name_and_real_default() -> None:
    res = relay_cli("serve", "--help", env={"COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "(default: None)" not in out and "default None" not in out
    assert "--http-port N" in out and "(env RELAY_HTTP_PORT; default 8080)" in out
    assert "(env RELAY_WRITE_QUEUE_TIMEOUT; default 5.0)" in out


@pytest.mark.parametrize("argv,field,value", [
    (["--http-port", "0"], "http_port", 0),
    (["--no-grpc"], "grpc", False),
    (["--db-timeout", "2.5"], "db_timeout", 2.5),
    (["--base-path", "/ocpi/emsp/2.1.1"], "base_path", "/ocpi/emsp/2.1.1"),
])
def test_a_flag_overrides_the_env(monkeypatch: pytest.MonkeyPatch, argv: list[str], field: str, value: object) -> None:
    monkeypatch.setenv(f"RELAY_{field.upper()}", "1" if field != "base_path" else "/other")
    args = build_parser().parse_args(["serve", *argv])
    assert getattr(settings_from_args(args), field) == value


def test_the_env_applies_where_no_flag_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_HTTP_MAX_CONNECTIONS", "77")
    assert settings_from_args(build_parser().parse_args(["serve"])).http_max_connections == 77
