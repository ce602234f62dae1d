"""Regenerate the checked-in protobuf/gRPC code under python/switchpoint/v1 from protos/.

`--check` regenerates into a temporary directory and fails if the checked-in files differ, so a
proto edit without regeneration (or a hand edit of generated code) never lands.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("switchpoint") / "v1"
OUTPUT_ROOT = ROOT / "python"


def _generate(out_root: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    subprocess.run(command, check=True)
    return sorted((out_root / PACKAGE_DIR).glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        target = OUTPUT_ROOT / PACKAGE_DIR
        stale = [
            p.name
            for p in generated
            if not (target / p.name).exists() or not filecmp.cmp(p, target / p.name, shallow=False)
        ]
        if args.check:
            if stale:
                print(f"generated protobuf code is stale: {', '.join(stale)}", file=sys.stderr)
                print("run `make protos` and commit the result", file=sys.stderr)
                return 1
            print(f"protobuf code is up to date ({len(generated)} files)")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for p in generated:
            shutil.copyfile(p, target / p.name)
        print(f"wrote {len(generated)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
