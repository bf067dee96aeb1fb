"""``python -m common.train`` as a real subprocess on the tiny model, with a file:// store.

Each test runs the program exactly as a runner does (spec URI argument, secrets
and progress endpoint in the environment) and checks what it leaves behind:
exit code, the one error line, the uploaded output, the progress POSTs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common import exitcodes, jobsecrets
from common.errors import BackendUnavailable, StorageError, Unprocessable
from common.schemas import Progress
from common.train.__main__ import Redactor, build_request, cgroup_cpu_quota, classify
from common.train.data import DatasetError
from common.train.models import ModelLoadError
from common.train.reporting import ProgressReporter

REPO = Path(__file__).resolve().parents[2]
SECRET = "hf_TOPSECRET_do_not_print_4242"
AUTH_SECRET = "auth-secret-9f8e7d"
PROGRESS_TOKEN = "progress-token-0123"


class Job:
    """One job's storage layout under a file:// root, and how to launch the program on it."""

    def __init__(self, root: Path, model_name: str) -> None:
        self.root = root
        self.model_name = model_name
        for split in ("train", "validation"):
            dest = root / "datasets" / f"{split}.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / "examples" / "sft" / f"{split}.jsonl", dest)

    def uri(self, *parts: str) -> str:
        return (self.root.joinpath(*parts)).as_uri()

    def request(self, **tuning: Any) -> dict[str, Any]:
        return {
            "base_model": {"model_name": self.model_name},
            "customization": {"method": "lora", "rank": 8, "lora_alpha": 16, "precision": "fp32"},
            "datasets": [
                {"source": self.uri("datasets", "train.jsonl"), "split": "train"},
                {"source": self.uri("datasets", "validation.jsonl"), "split": "validation"},
            ],
            "tuning_parameters": {
                "learning_rate": 5e-3, "batch_size": 8, "max_steps": 30, "logging_steps": 5,
                "max_sequence_length": 128, **tuning,
            },
        }

    def start(
        self,
        request: dict[str, Any],
        *,
        name: str = "job",
        secrets: dict[str, Any] | None = None,
        progress_url: str | None = None,
    ) -> subprocess.Popen[str]:
        spec = {
            "job_id": name,
            "backend": "huggingface",
            "request": request,
            "output_uri": self.uri("outputs", name),
            "log_uri": self.uri("logs", name),
        }
        spec_path = self.root / "specs" / f"{name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        secrets_file = self.root / "secrets" / f"{name}.json"  # as the runner hands them over
        jobsecrets.write(secrets_file, json.dumps({"secrets": secrets or {},
                                                   "progress_token": PROGRESS_TOKEN if progress_url else None}))
        env.update(
            PYTHONPATH=str(REPO),
            TRAINYARD_STORAGE_ROOT=str(self.root),
            TRAINYARD_JOB_SECRETS_FILE=str(secrets_file),
            HF_HUB_OFFLINE="1",
        )
        # The tiny model gains nothing from a second thread, and on a busy CI box OpenMP threads
        # spin-waiting on each other made training ~10x slower.
        env.setdefault("OMP_NUM_THREADS", "1")
        if progress_url:
            env.update(TRAINYARD_PROGRESS_URL=progress_url)
        return subprocess.Popen(
            [sys.executable, "-m", "common.train", spec_path.as_uri()],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def run(self, request: dict[str, Any], **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = self.start(request, **kw)
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def output(self, name: str = "job") -> Path:
        return self.root / "outputs" / name


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("trainyard: error: ")]


@pytest.fixture
def job(tmp_path: Path, tiny_model: Path) -> Job:
    return Job(tmp_path / "objects", str(tiny_model))


@pytest.fixture
def progress_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP endpoint standing in for the service's progress route."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"auth": self.headers.get("Authorization"), **body})
            self.send_response(204 if self.headers.get("Authorization") == f"Bearer {PROGRESS_TOKEN}" else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/internal/jobs/job/progress", received
    server.shutdown()
    server.server_close()


def test_lora_job_learns_reports_and_uploads(job: Job, progress_server: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = progress_server
    secrets = {"huggingface_token": SECRET, "auth_token": AUTH_SECRET}
    result = job.run(job.request(save_steps=15), secrets=secrets, progress_url=url)
    assert result.returncode == 0, result.stderr[-3000:]

    out = job.output()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 30
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["tokens_seen"] > 0 and metrics["tokens_per_second"] > 0
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert (out / "checkpoint-15" / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == job.model_name

    # The job log: one progress line per logging step; secrets nowhere.
    assert "[progress] step 5/30" in result.stdout
    for text in (result.stdout, result.stderr):
        assert SECRET not in text and AUTH_SECRET not in text and PROGRESS_TOKEN not in text

    types = [r["type"] for r in received]
    assert types[0] == "started" and types[-1] == "metrics"
    assert {"progress", "log"} <= set(types)
    assert all(r["auth"] == f"Bearer {PROGRESS_TOKEN}" for r in received)
    steps = [r["progress"]["step"] for r in received if r["type"] == "progress" and "loss" in r["progress"]]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert received[-1]["metrics"]["eval_loss"] == metrics["eval_loss"]
    assert {"step": 15, "path": "checkpoint-15"} in [r["data"] for r in received if r["type"] == "checkpoint"]

    # The adapter is a usable artifact: it loads onto the base and generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(job.model_name), out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "reverse: cat dog"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # SFT -> next job: the uploaded adapter is a valid base (its base is found and the adapter merged).
    chained = job.run(job.request(max_steps=5) | {"base_model": {"model_name": job.uri("outputs", "job")}}, name="job2")
    assert chained.returncode == 0, chained.stderr[-3000:]
    second = json.loads((job.output("job2") / "adapter_config.json").read_text())
    assert second["base_model_name_or_path"] == job.uri("outputs", "job")


def test_full_fine_tune_from_file_uri(job: Job, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, job.root / "models" / "tiny")
    request = job.request(max_steps=20, learning_rate=1e-3)
    request["base_model"]["model_name"] = job.uri("models", "tiny")
    request["customization"] = {"method": "full", "precision": "bf16", "trainable_layers": ["layers.", "norm"]}
    result = job.run(request)
    assert result.returncode == 0, result.stderr[-3000:]
    out = job.output()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "full"
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()

    from transformers import AutoModelForCausalLM

    trained, base = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_model)
    tp, bp = dict(trained.named_parameters()), dict(base.named_parameters())
    assert not tp["model.layers.0.self_attn.q_proj.weight"].equal(bp["model.layers.0.self_attn.q_proj.weight"])
    assert tp["model.embed_tokens.weight"].equal(bp["model.embed_tokens.weight"])  # frozen by trainable_layers


def test_qlora_job(job: Job) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip(f"bitsandbytes does not import here: {probe.stderr.strip().splitlines()[-1:]}")
    request = job.request(max_steps=5)
    request["customization"] |= {"method": "qlora", "precision": "bf16"}  # bf16 compute falls back to fp32 on CPU
    result = job.run(request)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((job.output() / "metrics.json").read_text())
    assert metrics["method"] == "qlora" and metrics["steps"] == 5
    assert (job.output() / "adapter_model.safetensors").is_file()


def test_malformed_jsonl_exits_invalid_input_with_line(job: Job) -> None:
    train = job.root / "datasets" / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = lines[2][:-5]  # truncate the third row's JSON
    train.write_text("\n".join(lines) + "\n")
    result = job.run(job.request(), secrets={"huggingface_token": SECRET})
    assert result.returncode == exitcodes.INVALID_INPUT
    [line] = error_lines(result.stderr)
    assert "line 3" in line and "invalid JSON" in line
    assert result.stderr.rstrip().endswith(line)
    assert "Traceback" not in result.stderr
    assert not job.output().exists()


def test_missing_dataset_exits_invalid_input(job: Job) -> None:
    (job.root / "datasets" / "validation.jsonl").unlink()
    result = job.run(job.request())
    assert result.returncode == exitcodes.INVALID_INPUT
    [line] = error_lines(result.stderr)
    assert "datasets[1]" in line and "validation.jsonl" in line


def test_missing_model_exits_model_load(job: Job, tmp_path: Path) -> None:
    request = job.request()
    request["base_model"]["model_name"] = str(tmp_path / "no-such-model")
    result = job.run(request, secrets={"auth_token": AUTH_SECRET})
    assert result.returncode == exitcodes.MODEL_LOAD
    [line] = error_lines(result.stderr)
    assert "no-such-model" in line
    assert "Traceback" not in result.stderr and AUTH_SECRET not in result.stderr


def test_invalid_request_never_echoes_secrets(job: Job) -> None:
    # A model-level validation error: pydantic's own message would print the whole input, secrets included.
    request = job.request()
    request["datasets"] = [request["datasets"][1]]  # validation only
    secrets = {"huggingface_token": SECRET, "auth_token": AUTH_SECRET, "webhook_auth_header": "Bearer " + SECRET}
    result = job.run(request, secrets=secrets)
    assert result.returncode == exitcodes.INVALID_INPUT
    [line] = error_lines(result.stderr)
    assert "at least one dataset must have split 'train'" in line
    for text in (result.stdout, result.stderr):
        assert SECRET not in text and AUTH_SECRET not in text


def test_sigterm_stops_training_and_exits_cancelled(job: Job) -> None:
    proc = job.start(job.request(max_steps=100_000, logging_steps=1))
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    for line in proc.stdout:  # wait until training is really under way
        if line.startswith("[progress] step 2/"):
            break
        assert time.monotonic() < deadline, "training never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == exitcodes.CANCELLED, err[-3000:]
    assert "stopping after the current step" in err
    [line] = error_lines(err)
    assert "cancelled" in line
    assert not job.output().exists()


# ----------------------------------------------------------------------------- in-process parts of the program


def test_classify_maps_failures_to_exit_codes() -> None:
    import torch

    def raised_in_from_pretrained() -> OSError:
        def from_pretrained() -> None:
            raise OSError("Can't load config for 'x/y'")

        try:
            from_pretrained()
        except OSError as e:
            return e
        raise AssertionError

    cases: list[tuple[BaseException, int, bool]] = [
        (DatasetError("t.jsonl line 3: invalid JSON"), exitcodes.INVALID_INPUT, False),
        (Unprocessable(["customization.peft.config: unknown LoRA option(s) x"]), exitcodes.INVALID_INPUT, False),
        (ModelLoadError("model directory not found: /nope"), exitcodes.MODEL_LOAD, False),
        (raised_in_from_pretrained(), exitcodes.MODEL_LOAD, False),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), exitcodes.OOM, False),
        (RuntimeError("CUDA error: out of memory"), exitcodes.OOM, False),
        (KeyboardInterrupt(), exitcodes.CANCELLED, False),
        (BackendUnavailable("the unsloth backend is unavailable: missing Python packages: unsloth"), 1, False),
        (StorageError("cannot reach S3 endpoint http://minio:9000"), exitcodes.FAILED, False),
        (OSError("disk full"), exitcodes.FAILED, True),
        (ZeroDivisionError("division by zero"), exitcodes.FAILED, True),
    ]
    for exc, code, traceback in cases:
        got_code, message, got_traceback = classify(exc)
        assert (got_code, got_traceback) == (code, traceback), exc
        assert message and "\n" not in message


def test_build_request_merges_secrets_and_hides_them_on_error() -> None:
    public = {
        "base_model": {"model_name": "m"},
        "datasets": [{"source": "file:///d/train.jsonl"}],
    }
    secrets = {"huggingface_token": SECRET, "dataset_auth": {"0": {"role_arn": "arn:aws:iam::1:role/r"}},
               "webhook_auth_header": "Bearer " + SECRET}
    request = build_request(public, secrets)
    assert request.base_model.huggingface_token is not None
    assert request.base_model.huggingface_token.get_secret_value() == SECRET
    assert request.datasets[0].auth is not None and "role_arn" in request.datasets[0].auth
    assert request.secrets()["webhook_auth_header"] == "Bearer " + SECRET
    with pytest.raises(ValueError) as err:
        build_request({**public, "datasets": [{"source": "http://x", "split": "train"}]}, secrets)
    assert "datasets.0.source" in str(err.value) and SECRET not in str(err.value)


def test_redactor() -> None:
    redact = Redactor([PROGRESS_TOKEN, ""])
    redact.add_values({"a": SECRET, "b": {"c": ["xyz", AUTH_SECRET]}})
    text = f"token={SECRET} auth={AUTH_SECRET} progress={PROGRESS_TOKEN} short=xyz"
    assert redact(text) == "token=*** auth=*** progress=*** short=xyz"  # too-short values would mangle text


def test_cgroup_cpu_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_reporter_never_fails_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reporter = ProgressReporter(f"http://127.0.0.1:{port}/p", "tok", retries=2, timeout=0.5)
    reporter.progress(Progress(step=3, total_steps=10, loss=1.23456, learning_rate=2e-4, epoch=0.5, percent=30.0))
    reporter.close()
    out, err = capsys.readouterr()
    assert out.strip() == "[progress] step 3/10 (30.0%) loss=1.2346 lr=2.00e-04 epoch=0.50"
    assert "progress report 'progress' not delivered (ConnectError)" in err and "tok" not in err

    quiet = ProgressReporter(None)
    quiet.log("hello")
    out, err = capsys.readouterr()
    assert out.strip() == "[log] hello" and "TRAINYARD_PROGRESS_URL is not set" in err

    ProgressReporter("http://127.0.0.1:1/p", enabled=False).log("rank 1 stays silent")
    assert capsys.readouterr() == ("", "")


def test_reporter_does_not_retry_a_rejected_token(
    progress_server: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, received = progress_server
    rejected = ProgressReporter(url, "wrong-token")
    rejected.started(backend="huggingface")
    rejected.close()  # reports go out from a background thread; close() flushes them
    assert len(received) == 1  # a 401 will not get better by retrying
    assert "progress report 'started' not delivered (HTTP 401)" in capsys.readouterr().err

    accepted = ProgressReporter(url, PROGRESS_TOKEN)
    accepted.started(backend="huggingface")
    accepted.close()
    assert received[-1]["data"] == {"backend": "huggingface"}


def test_rows_emptied_by_truncation_are_a_dataset_error(tiny_model: Path, tmp_path: Path) -> None:
    """In-process (the program's mapping of DatasetError to exit 65 is covered above)."""
    from common.schemas import TrainingRequest
    from common.train import data, models, sft

    request = TrainingRequest.model_validate({
        "base_model": {"model_name": str(tiny_model)},
        "customization": {"precision": "fp32"},
        "datasets": [{"source": "file:///unused/train.jsonl"}],
        "tuning_parameters": {"max_sequence_length": 8, "max_steps": 1},
    })
    train, val, fmt = data.load_sft_datasets([REPO / "examples" / "sft" / "validation.jsonl"], validation_split=0.1)
    source = models.resolve_model(request, tmp_path)
    model = models.load_causal_lm(request, source)
    with pytest.raises(DatasetError, match=r"train: none of the 36 rows .* max_sequence_length=8"):
        sft.build_trainer(
            model, models.load_tokenizer(source), train, val, request, tmp_path / "out",
            ProgressReporter(None, enabled=False), dataset_format=fmt, peft_config=models.prepare_model(request, model),
        )

