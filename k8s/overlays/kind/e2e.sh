#!/usr/bin/env bash
# `make e2e-kind`: the cluster path end to end on a local kind cluster. Needs Docker, kind and
# kubectl (and `make install` for .venv); it is not run in CI, where no container engine exists.
#
#  1. builds the two images (training, API) and loads them into kind
#  2. makes the node advertise a fake nvidia.com/gpu, so Jobs with resources.gpus schedule
#     (the CUDA build of torch falls back to the CPU there)
#  3. deploys k8s/overlays/kind: PostgreSQL, MinIO + bucket, gateway and the three services
#  4. uploads the tiny model and the SFT sample to MinIO, submits a job to the huggingface
#     service, waits for `completed`, checks the adapter landed in S3
#  5. submits a long job, cancels it and checks that no Job or pod is left
# KEEP=1 keeps the cluster afterwards; CLUSTER names it (default trainyard-e2e).
set -euo pipefail
CLUSTER=${CLUSTER:-trainyard-e2e}
NS=trainyard
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY="$ROOT/.venv/bin/python"
cd "$ROOT"
for tool in docker kind kubectl curl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 2; }
done
[ -x "$PY" ] || { echo "run 'make install' first" >&2; exit 2; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT

echo "== cluster and images"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
docker build -f docker/train.Dockerfile -t trainyard/train:dev .
docker build -f docker/api.Dockerfile -t trainyard/api:dev .
for img in train api; do kind load docker-image --name "$CLUSTER" "trainyard/$img:dev"; done

echo "== fake GPU capacity on the node"
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
kubectl proxy --port=18001 >/dev/null & PIDS+=($!)
sleep 2
curl -fsS -X PATCH -H 'Content-Type: application/json-patch+json' \
  --data '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "4"}]' \
  "http://127.0.0.1:18001/api/v1/nodes/$NODE/status" >/dev/null

echo "== deploy"
kubectl apply -k k8s/overlays/kind
kubectl -n "$NS" wait --for=condition=complete job/minio-create-bucket --timeout=300s
for d in postgres minio trainyard-huggingface trainyard-unsloth trainyard-dpo trainyard-gateway; do
  kubectl -n "$NS" rollout status "deploy/$d" --timeout=300s
done

echo "== data and model into MinIO"
kubectl -n "$NS" port-forward svc/minio 19000:9000 >/dev/null & PIDS+=($!)
kubectl -n "$NS" port-forward svc/trainyard-huggingface 18081:8081 >/dev/null & PIDS+=($!)
sleep 3
make model
AWS_ACCESS_KEY_ID=trainyard-dev AWS_SECRET_ACCESS_KEY=trainyard-dev-only \
TRAINYARD_STORAGE_URL=s3://trainyard-dev TRAINYARD_S3_ENDPOINT_URL=http://127.0.0.1:19000 \
"$PY" - <<'PYEOF'
from pathlib import Path
from common.storage import ObjectStore
store = ObjectStore()
store.upload_dir(Path("var/models/tiny-llama"), "s3://trainyard-dev/models/tiny-llama")
store.put_file("s3://trainyard-dev/datasets/sft/train.jsonl", Path("examples/sft/train.jsonl"))
PYEOF

echo "== train, then cancel"
"$PY" - <<'PYEOF'
import sys, time, subprocess, httpx
c = httpx.Client(base_url="http://127.0.0.1:18081", timeout=30)
def body(job_id, steps):
    return {"job_id": job_id, "base_model": {"model_name": "s3://trainyard-dev/models/tiny-llama"},
            "customization": {"method": "lora", "rank": 8, "precision": "fp32"},
            "resources": {"gpus": 1, "cpus": 1, "memory_gb": 4, "max_duration_minutes": 20},
            "datasets": [{"source": "s3://trainyard-dev/datasets/sft/train.jsonl"}],
            "tuning_parameters": {"max_steps": steps, "batch_size": 4, "max_sequence_length": 128}}
def wait(job_id, pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        job = c.get(f"/jobs/{job_id}").json()
        if pred(job):
            return job
        time.sleep(3)
    sys.exit(f"timed out: {c.get(f'/jobs/{job_id}').json()}")
r = c.post("/train", json=body("e2e-train", 10)); r.raise_for_status()
job = wait("e2e-train", lambda j: j["status"] in ("completed", "failed", "cancelled"), 900)
print(c.get("/jobs/e2e-train/logs", params={"tail": 20}).json()["logs"])
assert job["status"] == "completed", job
assert job["progress"]["step"] == 10, job
r = c.post("/train", json=body("e2e-cancel", 100000)); r.raise_for_status()
wait("e2e-cancel", lambda j: j["progress"].get("step", 0) > 0, 900)
assert c.post("/jobs/e2e-cancel/cancel").json()["status"] == "cancelled"
end = time.time() + 120  # foreground deletion: the pod terminates, then the Job and its Secret go
while True:
    left = subprocess.run(["kubectl", "-n", "trainyard", "get", "jobs,pods,secrets", "-l",
                           "trainyard.dev/job-id=e2e-cancel", "-o", "name"], capture_output=True, text=True, check=True)
    if not left.stdout.strip():
        break
    assert time.time() < end, f"left after cancel: {left.stdout}"
    time.sleep(2)
print("e2e-kind: train and cancel passed")
PYEOF
