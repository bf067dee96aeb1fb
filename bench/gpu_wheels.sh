#!/usr/bin/env bash
# Download the wheels bench/gpu_check.py needs on the offline GPU machine into .gpu-wheels/ (gitignored),
# slimmed to fit the device tool's 64 MiB carry: bitsandbytes keeps only its CPU library and the CUDA
# build the machine's torch uses, unsloth drops its "studio" web app (25 of its 28 MB).
#
#   bash bench/gpu_wheels.sh            # then carry ".gpu-wheels" and run: bash bench/gpu_check.sh
#
# The machine (see the device tool's KINDS.md) has Python 3.12, torch 2.11 (CUDA 13.0), triton,
# transformers 5.17, accelerate, tokenizers, safetensors, numpy, pandas, pyarrow, xxhash, aiohttp and
# httpx; it lacks the rest of the training environment, pinned here to the versions .venv-unsloth and the
# training image resolve to (unsloth's own pins: transformers <= 5.17, trl <= 1.15, datasets < 5).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.gpu-wheels}
PY_VERSION=${PY_VERSION:-3.12}
CUDA_LIB=${CUDA_LIB:-cuda130}  # libbitsandbytes_<this>.so is kept; match the GPU machine's torch.version.cuda
UNSLOTH_VERSION=$(sed -n 's/^UNSLOTH_VERSION := //p' Makefile)

WHEELS=(
  "unsloth==${UNSLOTH_VERSION}" "unsloth_zoo==${UNSLOTH_VERSION}"
  trl==1.15.0 peft==0.21.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0
  bitsandbytes==0.50.2 torchao==0.18.0 cut_cross_entropy==25.1.1 msgspec==0.22.0 hf_transfer==0.1.9
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
  typing-inspection==0.4.5 python-dotenv==1.2.4
)

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
