"""Edge limits of the receiver, over raw sockets against a real `relay serve` process.

A connection that never finishes its headers or its body is cut off, a header block past the limit is
answered 431 without being buffered, connections past the cap are closed at once, an idle kept-alive
connection is closed, and none of it keeps valid pushes from being answered.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil
import pytest

from relay.errors import ConfigError
from relay.settings import Settings
from tests.conftest import GFX_TOKEN, RelayProcess, eventually, example, spawn_relay

Serve = Callable[..., Awaitable[RelayProcess]]
PARTIAL_HEADER = b"PUT /locations/NL/GFX/SLOW HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
CLOSE_DEADLINE = 10.0  # seconds a test waits for the relay to close a connection whose limit is 1 s


@pytest.fixture
async def serve(database_url: str, config_path: Path) -> AsyncIterator[Serve]:
    """Start `relay serve` (receiver only) with extra flags and RELAY_* env; stopped at the end."""
    procs: list[RelayProcess] = []

    async def start(*flags: str, **env: str) -> RelayProcess:
        proc = await spawn_relay({"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path),
                                  "RELAY_LOG_LEVEL": "WARNING", **env}, "--no-grpc", "--no-workers", *flags)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.stop()


async def connect(proc: RelayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proc.ports["http"])


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = CLOSE_DEADLINE) -> bytes:
    """Everything the relay sends until it closes the connection; fails if it is still open after ``timeout``."""
    received = bytearray()

    async def drain() -> None:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionResetError:
            pass

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout}s; received {bytes(received[:120])!r}") from None
    return bytes(received)


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    """One keep-alive GET on a raw connection: (status, body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    assert length is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 30)
    return int(head.split()[1]), body


def answer(data: bytes) -> tuple[int, dict[str, object], bytes]:
    """(status, JSON body, header block) of the one answer in ``data``."""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.lower()


async def refused(proc: RelayProcess, reason: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(proc.url + "/metrics") as resp:
        text = await resp.text()
    found = re.search(rf'relay_http_connections_refused_total\{{reason="{reason}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def test_a_half_sent_header_is_cut_off_within_the_header_timeout(serve: Serve) -> None:
    proc = await serve(RELAY_HTTP_HEADER_TIMEOUT="1")
    reader, writer = await connect(proc)
    silent_reader, silent_writer = await connect(proc)  # connects and never sends a byte
    writer.write(PARTIAL_HEADER)
    await writer.drain()

    status, body, head = answer(await read_until_closed(reader))
    assert status == 408 and body["status_code"] == 2000, body
    assert "request headers not complete within 1 s" in str(body["status_message"])
    assert b"connection: close" in head
    assert await read_until_closed(silent_reader) == b""  # nothing asked, nothing answered: just closed
    assert await refused(proc, "header_timeout") == 2
    writer.close()
    silent_writer.close()


async def test_a_4_mb_header_is_refused_with_431_without_growing_the_process(serve: Serve) -> None:
    proc = await serve()  # the default limit, 16 KiB
    process = psutil.Process(proc.proc.pid)
    big = 4 * 1024 * 1024
    count = 6

    async def send_big_header() -> bytes:
        reader, writer = await connect(proc)

        async def send() -> None:
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Padding: " + b"a" * big + b"\r\n\r\n")
                await writer.drain()
            except ConnectionError:
                pass  # the relay stopped reading and closed: expected

        sending = asyncio.create_task(send())
        try:
            return await read_until_closed(reader)
        finally:
            await sending
            writer.close()

    await send_big_header()  # warm-up: code paths and buffers touched once before measuring
    before = process.memory_info().rss
    for _ in range(count):
        status, body, head = answer(await send_big_header())
        assert status == 431 and body["status_code"] == 2000, body
        assert body["status_message"] == "request header fields larger than 16384 bytes"
        assert b"connection: close" in head
    growth = process.memory_info().rss - before
    assert growth < big * count / 8, f"RSS grew by {growth} bytes over {count} refused 4 MB headers"
    assert await refused(proc, "header_too_large") == count + 1


async def test_valid_pushes_are_answered_while_200_slow_connections_are_open(serve: Serve) -> None:
    proc = await serve(RELAY_HTTP_HEADER_TIMEOUT="120")  # the slow ones stay open for the whole test
    slow = [await connect(proc) for _ in range(200)]
    for _, writer in slow:
        writer.write(PARTIAL_HEADER)
    await asyncio.gather(*(writer.drain() for _, writer in slow))

    loc = example("location_full.json")

    async def push(http: aiohttp.ClientSession, i: int) -> int:
        body = {**loc, "id": f"FAST{i}"}
        async with http.put(f"{proc.url}/locations/NL/GFX/FAST{i}", json=body,
                            headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
            assert resp.status == 200
            return int((await resp.json())["status_code"])

    connector = aiohttp.TCPConnector(limit=10)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        codes = await asyncio.gather(*(push(http, i) for i in range(100)))
    assert codes == [1000] * 100
    for _, writer in slow:
        writer.close()


async def test_connections_past_the_cap_are_closed_at_once_and_served_again_below_it(serve: Serve) -> None:
    proc = await serve(RELAY_HTTP_MAX_CONNECTIONS="20", RELAY_HTTP_KEEPALIVE_TIMEOUT="120",
                       RELAY_HTTP_HEADER_TIMEOUT="120")
    held = [await connect(proc) for _ in range(20)]
    for reader, writer in held:  # each answered once, so each is surely counted by the relay
        assert (await request(reader, writer, "/healthz"))[0] == 200

    reader, writer = await connect(proc)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert await read_until_closed(reader) == b""  # the 21st: closed before anything was read
    writer.close()

    _, first = held.pop()
    first.close()
    await first.wait_closed()

    async def served() -> bool:
        reader, writer = await connect(proc)
        try:
            return (await request(reader, writer, "/healthz"))[0] == 200
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()

    await eventually(served)
    assert await refused(proc, "connection_limit") >= 1
    for _, writer in held:
        writer.close()


async def test_a_partial_body_is_cut_off_within_the_body_timeout_and_nothing_is_stored(serve: Serve) -> None:
    proc = await serve(RELAY_HTTP_BODY_TIMEOUT="1")
    body = json.dumps({**example("location_full.json"), "id": "PARTIAL"}).encode()
    reader, writer = await connect(proc)
    writer.write(b"PUT /locations/NL/GFX/PARTIAL HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                 b"Authorization: Token " + GFX_TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n" + body[:300])
    await writer.drain()

    status, answered, head = answer(await read_until_closed(reader))
    assert status == 408 and answered["status_code"] == 2000, answered
    assert "request body not complete within 1 s" in str(answered["status_message"])
    assert b"connection: close" in head
    writer.close()
    async with aiohttp.ClientSession() as http, http.get(
            proc.url + "/locations/NL/GFX/PARTIAL", headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
        assert resp.status == 404
    assert await refused(proc, "body_timeout") == 1


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(serve: Serve) -> None:
    proc = await serve("--http-keepalive-timeout", "1")
    reader, writer = await connect(proc)
    assert (await request(reader, writer, "/healthz"))[0] == 200
    # uvicorn's own default is 5 s; closed well before that means the setting took effect
    assert await read_until_closed(reader, timeout=4) == b""
    writer.close()


async def test_a_large_push_and_pipelined_pushes_in_one_write_pass_the_header_limit(serve: Serve) -> None:
    """Only header bytes count: a 300 KB body written with its headers, and three requests written at
    once, are answered as usual."""
    proc = await serve(RELAY_HTTP_MAX_HEADER_BYTES="1024")
    loc = example("location_full.json")

    def put(loc_id: str, **extra: str) -> bytes:
        body = json.dumps({**loc, "id": loc_id, **extra}).encode()
        return (f"PUT /locations/NL/GFX/{loc_id} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                f"Authorization: Token {GFX_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    reader, writer = await connect(proc)
    writer.write(put("BIG", x_padding="a" * 300_000) + put("PIPE1") + put("PIPE2") + put("PIPE3"))
    await writer.drain()
    for _ in range(4):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length is not None, head
        body = json.loads(await asyncio.wait_for(reader.readexactly(int(length.group(1))), 30))
        assert int(head.split()[1]) == 200 and body["status_code"] == 1000, (head, body)
    writer.close()
    assert await refused(proc, "header_too_large") == 0


@pytest.mark.parametrize(("env", "problem"), [
    ({"RELAY_HTTP_HEADER_TIMEOUT": "0"}, "RELAY_HTTP_HEADER_TIMEOUT: must be a number of seconds above 0"),
    ({"RELAY_HTTP_BODY_TIMEOUT": "-1"}, "RELAY_HTTP_BODY_TIMEOUT: must be a number of seconds above 0"),
    ({"RELAY_HTTP_KEEPALIVE_TIMEOUT": "soon"}, "RELAY_HTTP_KEEPALIVE_TIMEOUT: expected an integer, got 'soon'"),
    ({"RELAY_HTTP_MAX_HEADER_BYTES": "100"}, "RELAY_HTTP_MAX_HEADER_BYTES: must be at least 1024"),
    ({"RELAY_HTTP_MAX_CONNECTIONS": "0"}, "RELAY_HTTP_MAX_CONNECTIONS: must be at least 1"),
])
def test_edge_limit_settings_are_checked(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert err.value.problems == [problem]
