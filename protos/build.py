"""Generate the Python gRPC code for protos/earworm/v1/*.proto.

Run `python -m protos.build` (the setup script does). The generated modules sit beside the
.proto files and are imported as `protos.earworm.v1.recognizer_pb2(_grpc)`; the proto package
(the wire name, `earworm.v1.Recognizer`) is independent of that import path.
`python -m protos.build --check` exits 1 when the generated code on disk is stale.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent  # the repository root
PROTO_DIR = Path(__file__).resolve().parent / "earworm" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Compile every .proto into `out_root` (mirroring protos/earworm/v1). Returns written files.

    protoc runs in a child process: grpc_tools bundles its own protobuf C++ runtime, which must not
    be loaded into a process that already holds TensorFlow's (they crash each other).
    """
    import importlib.util

    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("grpcio-tools is not installed: run scripts/setup.sh")
    include = str(Path(list(spec.submodule_search_locations)[0]) / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}): {done.stderr.strip()}")
    out_dir = out_root / PROTO_DIR.relative_to(PROTO_ROOT)
    return sorted(p for p in out_dir.glob("*_pb2*.py*"))


def is_current() -> bool:
    """True when the generated files on disk equal a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for f in fresh:
            on_disk = PROTO_DIR / f.name
            if not on_disk.exists() or on_disk.read_bytes() != f.read_bytes():
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        ok = is_current()
        print("generated code is current" if ok else "generated code is STALE: run python -m protos.build")
        return 0 if ok else 1
    if is_current():
        return 0
    written = generate(PROTO_ROOT)
    print("generated:", ", ".join(str(p.relative_to(PROTO_ROOT)) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
