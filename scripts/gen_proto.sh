#!/usr/bin/env bash
# Regenerate src/tinkerstore/types/tinker_public_pb2.py (+ .pyi) from tinker_public.proto.
#
#   scripts/gen_proto.sh            regenerate in place
#   scripts/gen_proto.sh --check    regenerate into a temp dir and fail if the committed files differ
#
# Needs grpcio-tools and ruff (`python -m pip install grpcio-tools ruff`) in $PYTHON
# (default: python3).
#
# The protoc output is post-processed in two ways, both so that the committed module works in more
# places than the protoc that made it:
#   1. The runtime-version guard is dropped. protoc >= 26 emits a call that refuses any protobuf
#      runtime older than the generator (7.35 here), though the generated code only uses the
#      `builder` API that every runtime since protobuf 3.20 has. Without the guard the module
#      imports on protobuf >= 4.25 (what pyproject asks for); see the header written below.
#   2. The descriptors go into a private DescriptorPool instead of the process-wide default one.
#      The official SDK registers a file with the same name ("tinker_public.proto") in the default
#      pool, and SDK 0.25's copy differs from ours (TopkPromptLogprobs), so sharing the default
#      pool makes whichever module imports second fail with "duplicate file name".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SRC_DIR="$ROOT/src/tinkerstore/types"
OUT_DIR="$SRC_DIR"
CHECK=0
if [[ "${1:-}" == "--check" ]]; then
  CHECK=1
  OUT_DIR="$(mktemp -d)"
fi

GEN_DIR="$(mktemp -d)"
trap 'rm -rf "$GEN_DIR"; [[ $CHECK == 1 ]] && rm -rf "$OUT_DIR"; true' EXIT
"$PYTHON" -m grpc_tools.protoc -I "$SRC_DIR" --python_out="$GEN_DIR" --pyi_out="$GEN_DIR" \
  "$SRC_DIR/tinker_public.proto"
PROTOC_VERSION="$("$PYTHON" -m grpc_tools.protoc --version)"

"$PYTHON" - "$GEN_DIR" "$OUT_DIR" "$PROTOC_VERSION" <<'PY'
import re
import sys
from pathlib import Path

gen, out, protoc_version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
header = f"""\
# GENERATED CODE, DO NOT EDIT. Committed on purpose (no protoc needed at install time).
# Source: src/tinkerstore/types/tinker_public.proto, compiled by {protoc_version}
# (grpcio-tools) and post-processed by scripts/gen_proto.sh, which says why.
# Regenerate: scripts/gen_proto.sh   (check: scripts/gen_proto.sh --check)
# Needs the protobuf runtime >= 4.25 (builder API; tested with 4.25 and 7.36); the descriptors
# live in a private DescriptorPool, so this module coexists with the official SDK's copy.
"""

py = (gen / "tinker_public_pb2.py").read_text()
py = py.replace("# NO CHECKED-IN PROTOBUF GENCODE\n", "")
py = py.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
py, n_guard = re.subn(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\)\n", "", py,
                      flags=re.S)
py, n_pool = re.subn(r"DESCRIPTOR = _descriptor_pool\.Default\(\)\.AddSerializedFile\(",
                     "_POOL = _descriptor_pool.DescriptorPool()\n"
                     "DESCRIPTOR = _POOL.AddSerializedFile(", py)
if n_pool != 1 or n_guard > 1:
    sys.exit(f"gen_proto: unexpected protoc output (pool={n_pool}, guard={n_guard}); update me")
(out / "tinker_public_pb2.py").write_text(header + py)

pyi = (gen / "tinker_public_pb2.pyi").read_text()
(out / "tinker_public_pb2.pyi").write_text("# ruff: noqa\n" + header + pyi)
PY

# The .pyi is linted and format-checked with the rest of the tree (the .py is excluded in
# pyproject), so it is written in the project's format.
"$PYTHON" -m ruff format --quiet --config "$ROOT/pyproject.toml" "$OUT_DIR/tinker_public_pb2.pyi"

if [[ $CHECK == 1 ]]; then
  diff -u "$SRC_DIR/tinker_public_pb2.py" "$OUT_DIR/tinker_public_pb2.py"
  diff -u "$SRC_DIR/tinker_public_pb2.pyi" "$OUT_DIR/tinker_public_pb2.pyi"
  echo "generated protobuf code is up to date"
fi
