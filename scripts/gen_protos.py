"""Generate trustgen/rpc/*_pb2*.py from proto/ (run after editing a .proto; commit the output).

python scripts/gen_protos.py           # regenerate
python scripts/gen_protos.py --check   # exit 1 if the committed code drifted from the sources
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT = ROOT / "trustgen" / "rpc"


def generate(dest: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((dest / "trustgen" / "rpc").glob("*_pb2*.py*"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(pathlib.Path(tmp))
        if args.check:
            drift = [
                f.name for f in files if not (OUT / f.name).exists() or not filecmp.cmp(f, OUT / f.name, shallow=False)
            ]
            if drift:
                print(f"generated code drifted from proto/: {', '.join(drift)}; run scripts/gen_protos.py")
                return 1
            print("generated code matches proto/")
            return 0
        OUT.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, OUT / f.name)
            print(f"wrote {OUT / f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
