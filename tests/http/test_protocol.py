"""The receiver's HTTP protocol writes each answer's header block and body together."""

from __future__ import annotations

import asyncio

from relay.http.protocol import _CoalescingTransport
from tests.conftest import RelayHandle, example


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_header_block_and_body_go_out_in_one_write() -> None:
    rec = RecordingTransport()
    t = _CoalescingTransport(rec, asyncio.get_running_loop())
    t.write(HEAD)
    assert rec.writes == []
    t.write(b"{}")
    assert rec.writes == [HEAD + b"{}"]
    t.write(b"more")  # anything that is not a header block passes straight through
    assert rec.writes[-1] == b"more"


async def test_a_header_block_without_body_is_flushed_on_the_next_loop_turn_or_close() -> None:
    rec = RecordingTransport()
    t = _CoalescingTransport(rec, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0)  # exactly one loop turn (no time passes): the turn the flush is promised on
    assert rec.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(HEAD)
    t.close()
    assert rec.writes[-1] == HEAD and rec.closed
    assert t.is_closing()  # other attributes are the real transport's


async def test_keep_alive_pushes_and_reads_over_the_real_server(relay: RelayHandle) -> None:
    """Pushes (the fast path) and reads (Starlette) alternating on one keep-alive connection: every
    answer arrives whole, in order, with its request id."""
    loc = example("location_full.json")
    for i in range(30):
        body = {**loc, "id": f"KA{i}"}
        put = await relay.put(f"/locations/NL/GFX/KA{i}", body, headers={"X-Request-ID": f"put-{i}"})
        assert put.status == 200 and put.body["status_code"] == 1000
        assert put.headers["X-Request-ID"] == f"put-{i}"
        got = await relay.get(f"/locations/NL/GFX/KA{i}", headers={"X-Request-ID": f"get-{i}"})
        assert got.status == 200 and got.body["data"]["id"] == f"KA{i}"
        assert got.headers["X-Request-ID"] == f"get-{i}"
