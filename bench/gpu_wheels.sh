#!/usr/bin/env bash
# Download the wheels bench/gpu_check.py needs into .gpu-wheels/ (gitignored), for a GPU machine that has
# torch with CUDA but not the rest of the training environment, or no network: copy the folder there
# and run bench/gpu_check.sh. Every version comes from locks/train-image.txt (the training image), so
# the check runs what the image runs. To keep the folder small (~21 MB), bitsandbytes keeps only its CPU
# library and the CUDA build the machine's torch uses, and unsloth drops its "studio" web app.
#
#   bash bench/gpu_wheels.sh            # PY_VERSION / CUDA_LIB: the GPU machine's Python and torch.version.cuda
#
# The packages below are what the GPU machine is expected to lack; torch, triton, transformers,
# accelerate, tokenizers, safetensors, numpy, pandas, pyarrow, xxhash, aiohttp and httpx are taken
# from it. Add a name here if yours lacks more.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.gpu-wheels}
PY_VERSION=${PY_VERSION:-3.12}
CUDA_LIB=${CUDA_LIB:-cuda130}  # libbitsandbytes_<this>.so is kept; match the GPU machine's torch.version.cuda
LOCK=locks/train-image.txt

NAMES=(
  unsloth unsloth-zoo trl peft datasets dill multiprocess fsspec bitsandbytes torchao cut-cross-entropy
  msgspec hf-transfer pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
)
WHEELS=()
for name in "${NAMES[@]}"; do
  pin=$(grep -m1 -E "^${name}==" "$LOCK" | sed 's/ .*//') || { echo "gpu_wheels.sh: $name is not in $LOCK" >&2; exit 1; }
  WHEELS+=("$pin")
done

rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}" 2>&1 | grep -v "^WARNING: Location" || true

python3 - "$DEST" "$CUDA_LIB" <<'PY'
"""Rewrite the two heavy wheels without what the check never loads (RECORD updated to match)."""
import sys, zipfile
from pathlib import Path

dest, cuda_lib = Path(sys.argv[1]), sys.argv[2]

def keep(name: str, member: str) -> bool:
    if name.startswith("bitsandbytes-") and "/libbitsandbytes_" in member:
        return member.endswith(("libbitsandbytes_cpu.so", f"libbitsandbytes_{cuda_lib}.so"))
    if name.startswith("unsloth-") and not name.startswith("unsloth_zoo"):
        return not member.startswith("studio/")
    return True

for wheel in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(wheel) as src:
        members = src.infolist()
        dropped = {m.filename for m in members if not keep(wheel.name, m.filename)}
        if not dropped:
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
            for m in members:
                if m.filename in dropped:
                    continue
                data = src.read(m.filename)
                if m.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped).encode()
                out.writestr(m, data)
    before = wheel.stat().st_size
    slim.replace(wheel)
    print(f"slimmed {wheel.name}: {before / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB ({len(dropped)} files dropped)")
PY
du -sh "$DEST"
