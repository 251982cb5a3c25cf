"""Regenerate the committed protobuf/gRPC modules from proto/ (`make proto`).

The .proto files live under proto/federation/wire/v1 and are compiled with `-Iproto`, so the
generated modules land in federation/wire/v1 and import each other as `federation.wire.v1.*`.
The output depends on the grpcio-tools version (it is stamped into the files), hence the pin.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE_DIR = Path("federation") / "wire" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


class RegenerateError(RuntimeError):
    """protoc failed or the proto sources are missing."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto sources, relative to proto_root, in a stable order."""
    source_dir = proto_root / PROTO_PACKAGE_DIR
    files = sorted(p.relative_to(proto_root) for p in source_dir.glob("*.proto"))
    if not files:
        raise RegenerateError(f"no .proto files under {source_dir}")
    return files


def generated_files(out_root: Path) -> list[Path]:
    """Paths (relative to out_root) of generated modules present under out_root."""
    package_dir = out_root / PROTO_PACKAGE_DIR
    found = [
        p.relative_to(out_root)
        for p in package_dir.iterdir()
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    ]
    return sorted(found)


def regenerate(out_root: Path = REPO_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run grpc_tools.protoc; returns the generated files relative to out_root."""
    from grpc_tools import protoc  # dev-only dependency, imported lazily

    well_known = resources.files("grpc_tools") / "_proto"
    (out_root / PROTO_PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *(str(f) for f in proto_files(proto_root)),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RegenerateError(f"protoc exited with {code}")
    return generated_files(out_root)


def main(argv: list[str] | None = None) -> int:
    """CLI: regenerate into the repository (or --out DIR)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    try:
        written = regenerate(args.out)
    except RegenerateError as exc:
        print(f"regenerate: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
