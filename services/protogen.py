"""Generate the gRPC stubs in ``services/api/`` from ``protos/*.proto`` (``make protos``).

protoc's virtual import path (``-Iservices/api=protos``) makes the generated ``*_pb2_grpc.py``
import ``services.api.<name>_pb2``, so the stubs work as a package without path hacks. The
generator version is pinned (grpcio-tools in the ``dev`` extra) so output is reproducible; a test
regenerates into a temp dir and fails when the committed stubs drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "protos"
PACKAGE = "services/api"


def generate(out_root: Path) -> list[Path]:
    """Compile every ``protos/*.proto`` into ``out_root/services/api``; return the files written."""
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in protos:
        args = [
            "protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"{PACKAGE}/{proto.name}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return sorted(p for p in (out_root / PACKAGE).glob("*_pb2*"))


def main() -> int:
    written = generate(REPO)
    for path in written:
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
