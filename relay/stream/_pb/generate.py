"""Regenerate relay/stream/_pb from protos/ (a dev-time tool: needs grpcio-tools, the `test` extra).

    python -m relay.stream._pb.generate            # rewrite the committed files
    python -m relay.stream._pb.generate --check    # exit 1 if they differ from a fresh generation

The generated code is committed so that `pip install .` needs no protoc; tests/stream/test_generated.py
runs the same generation into a temporary directory and fails when the committed files drift.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO = "ocpi_relay/v1/relay.proto"
OUTPUTS = ("relay_pb2.py", "relay_pb2.pyi", "relay_pb2_grpc.py")
HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[2] / "protos"

# protoc writes `from ocpi_relay.v1 import relay_pb2 as ...` (the proto's package path); the files
# live in relay.stream._pb, so that import becomes package-relative.
_IMPORT_RE = re.compile(r"^from ocpi_relay\.v1 import (relay_pb2 as \w+)$", re.MULTILINE)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on the proto into ``out_dir`` (flat: relay_pb2.py, .pyi, _grpc.py); return the files."""
    from grpc_tools import protoc  # dev-time only: not a runtime dependency

    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main([
            "grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO,
        ])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        produced = Path(tmp) / Path(PROTO).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            text = (produced / name).read_text(encoding="utf-8")
            text = _IMPORT_RE.sub(r"from . import \1", text)
            target = out_dir / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the committed files differ")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(HERE):
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.name for p in fresh if p.read_bytes() != (HERE / p.name).read_bytes()]
    for name in stale:
        print(f"relay/stream/_pb/{name} is out of date: run python -m relay.stream._pb.generate", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
