#!/usr/bin/env bash
# The GPU check as one command on your GPU machine: install the wheels of bench/gpu_wheels.sh (if the
# folder is there) into a private folder, then run bench/gpu_check.py. Extra arguments go to gpu_check.py.
#   bash bench/gpu_check.sh --json gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.gpu-wheels}
SITE=${SITE:-/tmp/trainyard-site}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check.sh: no wheels in $WHEELS (bench/gpu_wheels.sh downloads them); using what is installed" >&2
fi
export PYTHONUNBUFFERED=1 UNSLOTH_DISABLE_STATISTICS=1
exec python3 bench/gpu_check.py "$@"
