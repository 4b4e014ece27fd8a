"""`relay endpoints`: the URL of every module under the public address and RELAY_BASE_PATH."""

from __future__ import annotations

import json
import subprocess

from tests.commands import relay_cli


def relay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return relay_cli("endpoints", *args, env=env)


def test_endpoints_prints_one_url_per_module_under_the_base_path() -> None:
    res = relay("--public-url", "https://relay.example.com/", RELAY_BASE_PATH="/ocpi/emsp/2.1.1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n") == [
        "locations                   https://relay.example.com/ocpi/emsp/2.1.1/locations",
        "sessions                    https://relay.example.com/ocpi/emsp/2.1.1/sessions",
        "tariffs                     https://relay.example.com/ocpi/emsp/2.1.1/tariffs",
        "cdrs                        https://relay.example.com/ocpi/emsp/2.1.1/cdrs",
        "ChargeStationNotifications  https://relay.example.com/ocpi/emsp/2.1.1/ChargeStationNotifications",
        "notifications               https://relay.example.com/ocpi/emsp/2.1.1/notifications",
        "",
    ]


def test_endpoints_json_and_base_path_flag() -> None:
    res = relay("--public-url", "https://relay.example.com/gfx", "--base-path", "/ocpi/2.1.1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["base_path"] == "/ocpi/2.1.1"
    assert {e["module"]: e["url"] for e in data["endpoints"]} == {
        "locations": "https://relay.example.com/gfx/ocpi/2.1.1/locations",
        "sessions": "https://relay.example.com/gfx/ocpi/2.1.1/sessions",
        "tariffs": "https://relay.example.com/gfx/ocpi/2.1.1/tariffs",
        "cdrs": "https://relay.example.com/gfx/ocpi/2.1.1/cdrs",
        "chargestationnotifications": "https://relay.example.com/gfx/ocpi/2.1.1/ChargeStationNotifications",
        "notifications": "https://relay.example.com/gfx/ocpi/2.1.1/notifications",
    }


def test_endpoints_refuses_a_public_url_that_is_not_one() -> None:
    for bad in ("relay.example.com", "ftp://relay.example.com", "https://user:pw@relay.example.com",
                "https://relay.example.com/?x=1"):
        res = relay("--public-url", bad)
        assert res.returncode == 2 and res.stderr.startswith("--public-url: "), (bad, res.stderr)
        assert "pw" not in res.stderr
