"""Credentials in a target's headers and URLs never reach check-config output or the logs."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from relay.log import secret_filter
from relay.routing.holder import ConfigHolder
from relay.routing.loader import load_config
from tests.test_cli import relay_cli

HOOK_SECRET = "whsec_aG9vay10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"
INLINE = "inline-header-secret-1f2e"
FROM_ENV = "env-header-secret-7c6d"
QUERY = "query-token-secret-9a8b"
PASSWORD = "url-password-secret-3e4f"

CONFIG = f"""
targets:
  - name: partner
    type: webhook
    url: https://partner.example.nl/hook?token={QUERY}&v=2
    secret_env: TEST_CFG_HOOK_SECRET
    headers:
      X-Api-Key: {INLINE}
    headers_env:
      X-Partner-Key: TEST_CFG_HEADER_KEY
rules:
  - name: all
    match: {{modules: [sessions]}}
    to: [partner]
"""

ENV = {"TEST_CFG_HOOK_SECRET": HOOK_SECRET, "TEST_CFG_HEADER_KEY": FROM_ENV}
SECRETS = (INLINE, FROM_ENV, QUERY, PASSWORD)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forwarding.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_config_json_masks_header_values_and_url_query(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG)
    for args in (["check-config", str(path), "--json"], ["check-config", str(path)]):
        res = relay_cli(*args, env=ENV)
        assert res.returncode == 0, res.stderr
        for secret in SECRETS:
            assert secret not in res.stdout + res.stderr, (args, secret)
    (target,) = json.loads(relay_cli("check-config", str(path), "--json", env=ENV).stdout)["targets"]
    assert target["headers"] == {"X-Api-Key": "**********", "X-Partner-Key": "**********"}
    assert target["url"] == "https://partner.example.nl/hook?token=**********&v=**********"


def test_a_password_in_a_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG.replace("https://partner.example.nl", f"https://user:{PASSWORD}@partner.example.nl"))
    res = relay_cli("check-config", str(path), "--json", env=ENV)
    assert res.returncode == 1
    assert "credentials in the URL" in res.stderr
    for secret in SECRETS:
        assert secret not in res.stdout + res.stderr, secret


def test_headers_env_reads_the_value_from_the_env_and_reports_a_missing_var(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG)
    (target,) = load_config(path, ENV).targets
    assert dict(target.headers) == {"X-Api-Key": INLINE, "X-Partner-Key": FROM_ENV}
    assert INLINE not in repr(target) and FROM_ENV not in repr(target)
    res = relay_cli("check-config", str(path), env={"TEST_CFG_HOOK_SECRET": HOOK_SECRET})
    assert res.returncode == 1 and "TEST_CFG_HEADER_KEY is not set" in res.stderr, res.stderr
    twice = _write(tmp_path, CONFIG.replace("X-Partner-Key: TEST", "x-api-key: TEST"))
    res = relay_cli("check-config", str(twice), env=ENV)
    assert res.returncode == 1 and "given twice" in res.stderr, res.stderr


def test_header_values_and_url_query_values_are_scrubbed_from_logs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    ConfigHolder(str(_write(tmp_path, CONFIG)))  # installs the config's secrets in the log filter
    record = logging.LogRecord("relay.deliver.worker", logging.WARNING, __file__, 1, "delivery failed",
                               None, None)
    record.reason = f"invalid url: https://partner.example.nl/hook?token={QUERY} key {INLINE} {FROM_ENV}"
    secret_filter.filter(record)
    text = str(record.__dict__)
    for secret in (INLINE, FROM_ENV, QUERY):
        assert secret not in text, secret
