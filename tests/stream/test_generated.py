"""The committed code in relay/stream/_pb is exactly what protoc makes of protos/ today."""

from __future__ import annotations

from pathlib import Path

from relay.stream._pb import generate


def test_committed_generated_code_matches_a_fresh_generation_from_the_proto(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert sorted(p.name for p in fresh) == sorted(generate.OUTPUTS)
    for path in fresh:
        committed = generate.HERE / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is out of date: run `python -m relay.stream._pb.generate` and commit the result"
        )


def test_generated_grpc_module_imports_its_messages_package_relative() -> None:
    text = (generate.HERE / "relay_pb2_grpc.py").read_text()
    assert "from . import relay_pb2 as" in text
    assert "from ocpi_relay" not in text
