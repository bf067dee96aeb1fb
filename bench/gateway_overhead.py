"""What the gateway adds to a read: p50/p99 of ``GET /v1/finetune/{id}`` through the gateway against
``GET /jobs/{job_id}`` on the HuggingFace service directly, for the same finished job, in one run.

    .venv/bin/python bench/gateway_overhead.py [--requests 1000]

Starts the service and the gateway as uvicorn subprocesses (SQLite, file:// storage in a temp
dir), runs one real two-step fine-tune of the tiny model through the gateway so there is a job to
read, then alternates the two reads on keep-alive connections. The gateway's read checks the API
key, reads the finetune, and (for a finished job) does not call the service; for an active job it
would also mirror the job from the service at most once a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.utils.server import Server  # noqa: E402  (the test suite's real-subprocess server)

KEY = "ty_bench_admin_key_0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="reads per target")
    args = parser.parse_args()

    from common.train.tiny_model import build_tiny_model

    model = build_tiny_model(REPO / "var" / "models" / "tiny-llama")
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        root = Path(tmp)
        (root / "objects").mkdir()
        env = {
            "TRAINYARD_DATABASE_URL": f"sqlite:///{root / 'trainyard.db'}",
            "TRAINYARD_STORAGE_ROOT": str(root / "objects"),
            "TRAINYARD_LOG_DIR": str(root / "logs"),
            "TRAINYARD_ADMIN_API_KEY": KEY,
        }
        with Server("services.huggingface.app:app", env, log_path=root / "service.log") as svc:
            gw_env = {**env, "TRAINYARD_SERVICE_URL_HUGGINGFACE": svc.url}
            with Server("gateway.app:app", gw_env, log_path=root / "gateway.log") as gw:
                finetune_id, job_id = run_finetune(gw, model)
                measure(gw, svc, finetune_id, job_id, args.requests)


def run_finetune(gw: Server, model: Path) -> tuple[str, str]:
    with httpx.Client(base_url=gw.url, headers={"x-portkey-api-key": KEY}, timeout=60) as c:
        created = c.post("/v1/datasets", json={"name": "train.jsonl"}).json()["data"]
        httpx.put(created["signed_url"], content=(REPO / "examples" / "sft" / "train.jsonl").read_bytes()).raise_for_status()
        c.put(f"/v1/datasets/{created['id']}", json={"s3_path": created["s3_path"]}).raise_for_status()
        hp = {"max_steps": 2, "precision": "fp32", "max_sequence_length": 128}
        finetune_id = c.post("/v1/finetune", json={"name": "bench", "provider": "huggingface", "model": str(model),
                                                   "hyperparameters": hp}).json()["data"]["id"]
        c.put(f"/v1/finetune/{finetune_id}", json={"training_dataset_id": created["id"]}).raise_for_status()
        c.post(f"/v1/finetune/{finetune_id}/validation/start").raise_for_status()
        wait(c, finetune_id, ("pk_dataset_validation_successfull",))
        c.post(f"/v1/finetune/{finetune_id}/start").raise_for_status()
        ft = wait(c, finetune_id, ("completed", "failed", "cancelled"))
        print(f"finetune {finetune_id}: job {ft['job_id']} {ft['status']}", flush=True)
        return finetune_id, ft["job_id"]


def wait(c: httpx.Client, finetune_id: str, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ft = c.get(f"/v1/finetune/{finetune_id}").json()["data"]
        if ft["status"] in statuses:
            return ft
        time.sleep(0.3)
    raise SystemExit(f"finetune {finetune_id} did not reach {statuses} in {timeout}s")


def measure(gw: Server, svc: Server, finetune_id: str, job_id: str, n: int) -> None:
    targets = {
        "gateway GET /v1/finetune/{id}": (httpx.Client(base_url=gw.url, headers={"x-portkey-api-key": KEY}),
                                         f"/v1/finetune/{finetune_id}"),
        "service GET /jobs/{id}": (svc.client(), f"/jobs/{job_id}"),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(50):  # warm up connections, caches and the thread pools
        for client, path in targets.values():
            client.get(path).raise_for_status()
    for _ in range(n):  # interleaved, so both see the same machine load
        for name, (client, path) in targets.items():
            t = time.perf_counter()
            client.get(path).raise_for_status()
            times[name].append((time.perf_counter() - t) * 1000)
    for client, _ in targets.values():
        client.close()
    print(f"\n{n} reads each, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    stats = {}
    for name, ms in times.items():
        stats[name] = (percentile(ms, 50), percentile(ms, 99), statistics.fmean(ms))
        print(f"  {name:<32} p50 {stats[name][0]:6.2f} ms   p99 {stats[name][1]:6.2f} ms   mean {stats[name][2]:6.2f} ms")
    (g50, g99, gmean), (s50, s99, smean) = stats.values()
    print(f"gateway adds {g50 - s50:.2f} ms at p50, {g99 - s99:.2f} ms at p99 ({gmean - smean:.2f} ms mean)")


if __name__ == "__main__":
    main()
