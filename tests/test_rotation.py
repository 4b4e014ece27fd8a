"""Token rotation without a restart: old and new tokens both valid, the old one removed by a reload
(SIGHUP or in-process) while pushes keep arriving, none of them failing; webhooks signed with both
secrets during a rotation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from relay.settings import Settings
from tests.conftest import RelayHandle, eventually, example, spawn_relay, start_relay, stop_relay
from tests.deliver.conftest import HOOK_SECRET, RESEARCH_SECRET
from tests.servers import PartnerSink

OLD, NEW, NEWER = "rotation-old-token-1a2b", "rotation-new-token-3c4d", "rotation-newer-token-5e6f"


def location_body() -> tuple[str, dict[str, object]]:
    body = example("location_full.json")
    body["id"] = str(uuid.uuid4())
    return f"/locations/NL/GFX/{body['id']}", body


class Pusher:
    """Pushes locations back to back with one token until stopped; records every HTTP status."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Token {self.token}"}) as http:
            while not self._stop.is_set():
                path, body = location_body()
                async with http.put(self.base + path, json=body) as resp:
                    await resp.read()
                    self.statuses.append(resp.status)

    async def advanced(self) -> None:
        """Wait until at least one more push was answered."""
        n = len(self.statuses)

        async def more() -> bool:
            return len(self.statuses) > n

        await eventually(more)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[int]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.statuses


async def status_with(url: str, token: str) -> int:
    path, body = location_body()
    async with aiohttp.ClientSession() as http, \
            http.put(url + path, json=body, headers={"Authorization": f"Token {token}"}) as resp:
        return resp.status


def subscription_config(path: Path, token_keys: str) -> None:
    path.write_text(textwrap.dedent(f"""
        subscriptions:
          - name: greenflux
            {token_keys}
            cpos: ["NL*GFX"]
    """))


@pytest.fixture
async def rotating_relay(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RelayHandle]:
    monkeypatch.setenv("TEST_ROTATE_OLD", OLD)
    monkeypatch.setenv("TEST_ROTATE_NEW", NEW)
    config = tmp_path / "forwarding.yaml"
    subscription_config(config, "token_env: [TEST_ROTATE_OLD, TEST_ROTATE_NEW]")
    handle = await start_relay(Settings(database_url=database_url, config=str(config), http_port=0, grpc_port=0,
                                        grpc=False, workers=False))
    try:
        yield handle
    finally:
        await stop_relay(handle)


async def test_old_and_new_token_during_rotation_then_old_removed_by_reload_without_a_failed_push(
    rotating_relay: RelayHandle,
) -> None:
    relay = rotating_relay
    assert await status_with(relay.base, OLD) == 200
    assert await status_with(relay.base, NEW) == 200
    pusher = Pusher(relay.base, NEW)
    pusher.start()
    holder = relay.info.holder
    assert holder is not None
    # the operator drops the old token; the reload (what SIGHUP runs) happens while pushes arrive
    subscription_config(Path(relay.settings.config), "token_env: TEST_ROTATE_NEW")
    for _ in range(5):
        await pusher.advanced()
        assert holder.reload()
    await pusher.advanced()
    statuses = await pusher.stop()
    assert len(statuses) >= 6 and set(statuses) == {200}
    assert await status_with(relay.base, OLD) == 401
    assert await status_with(relay.base, NEW) == 200


async def test_secret_file_change_is_picked_up_by_sighup(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "stable").write_text(NEW + "\n")
    rotating = tmp_path / "rotating"
    rotating.write_text(OLD + "\n")
    config = tmp_path / "forwarding.yaml"
    subscription_config(config, "token_file: [rotating, stable]")
    proc = await spawn_relay({"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config),
                              "RELAY_GRPC": "false", "RELAY_WORKERS": "false", "RELAY_LOG_LEVEL": "INFO"})
    try:
        base = proc.url
        assert await status_with(base, OLD) == 200
        pusher = Pusher(base, NEW)
        pusher.start()
        rotating.write_text(NEWER + "\n")
        os.kill(proc.proc.pid, signal.SIGHUP)

        async def newer_accepted() -> bool:
            return await status_with(base, NEWER) == 200

        await eventually(newer_accepted)
        await pusher.advanced()
        statuses = await pusher.stop()
        assert statuses and set(statuses) == {200}
        assert await status_with(base, OLD) == 401
        log = "".join(proc.log)
        assert "config reloaded" in log
        assert OLD not in log and NEW not in log and NEWER not in log
    finally:
        with contextlib.suppress(ProcessLookupError):
            await proc.stop()


async def test_webhook_with_two_secrets_is_signed_with_both(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str],
    partner_sink: PartnerSink,
) -> None:
    sink = partner_sink
    monkeypatch.setenv("TEST_HOOK_OLD", HOOK_SECRET)
    (tmp_path / "hook_new").write_text(RESEARCH_SECRET + "\n")
    config = tmp_path / "forwarding.yaml"
    config.write_text(textwrap.dedent(f"""
        subscriptions:
          - {{name: greenflux, token_env: TEST_TOKEN_GFX, cpos: ["NL*GFX"]}}
        targets:
          - name: hook
            type: webhook
            url: {sink.url}/hook
            secret_env: TEST_HOOK_OLD
            secret_file: hook_new
            retry_base: 0.05
        rules:
          - {{name: all, to: [hook]}}
    """))
    relay = await start_relay(Settings(database_url=database_url, config=str(config), http_port=0, grpc_port=0,
                                       grpc=False, workers=True, instance="rotation-test"))
    try:
        path, body = location_body()
        assert (await relay.put(path, body, token=tokens["greenflux"])).status == 200

        async def delivered() -> bool:
            return bool(sink.accepted())

        await eventually(delivered)
        (received,) = sink.accepted()
        signatures = received.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        for secret in (HOOK_SECRET, RESEARCH_SECRET):  # a receiver holding either secret verifies the copy
            payload = Webhook(secret).verify(received.body, received.headers)
            assert payload["data"]["id"] == body["id"]
    finally:
        await stop_relay(relay)
