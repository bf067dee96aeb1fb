"""Can a backend's heavy machinery run where the jobs run? Asked without importing it here.

An API process must not import torch, bitsandbytes or unsloth, and its own interpreter may not
even be the one its jobs use (the Unsloth service runs jobs in ``.venv-unsloth``). So each probe
is a small function in this module that the *job* interpreter runs in a subprocess:

    python -c "import common.train.probes as p; p.unsloth_loads()"

Its answer (None, or the last line of its error) is cached per interpreter for the life of the
process. Inside the training program itself the probe runs in-process: the job imports the same
modules a moment later anyway, so a second interpreter would only cost start-up time.

Only the local runner is probed; on Kubernetes the training image carries the packages and the
slim API image rightly lacks them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 180.0  # `import unsloth` on a busy 2-core box takes ~20 s; leave room


# --------------------------------------------------------------------------- probes (run in the job interpreter)


def bnb_4bit_runs() -> None:
    """A 4-bit layer as a QLoRA job uses it: quantized on the job's device (nf4, fp32 compute), a
    training step (forward and backward to the input, as LoRA needs) and an evaluation forward
    without gradients, which on CPUs with AVX-512 BF16 repacks the weight for bitsandbytes' fused kernel."""
    import bitsandbytes as bnb
    import torch

    from common.train.quant_shapes import BLOCKSIZE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = bnb.nn.Linear4bit(2 * BLOCKSIZE, BLOCKSIZE, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer = layer.to(device)  # quantizes
    x = torch.randn(4, 2 * BLOCKSIZE, device=device, requires_grad=True)
    layer.train()
    layer(x).pow(2).mean().backward()
    layer.eval()
    with torch.no_grad():
        y = layer(x.detach())
    if y.shape != (4, BLOCKSIZE) or x.grad is None or not (torch.isfinite(y).all() and torch.isfinite(x.grad).all()):
        raise RuntimeError(f"bitsandbytes 4-bit layer on {device} gave garbage")


def unsloth_loads() -> None:
    """``import unsloth`` (which patches transformers/trl/peft) and reach its FastLanguageModel."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: F401


PROBES = {"bnb_4bit_runs": bnb_4bit_runs, "unsloth_loads": unsloth_loads}


# --------------------------------------------------------------------------- asking


def in_training_program() -> bool:
    """True inside ``python -m common.train`` (where importing torch and friends is the point)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec is not None and spec.name in ("common.train.__main__", "common.train")


def probe(name: str, python: str | None = None) -> str | None:
    """Run probe ``name`` in interpreter ``python`` (default: this one); None when it passed,
    else why not, in one line."""
    python = python or sys.executable
    if in_training_program() and os.path.realpath(python) == os.path.realpath(sys.executable):
        try:
            PROBES[name]()
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            return _last_line(traceback.format_exception_only(e))
        return None
    return _probe_subprocess(name, python)


@functools.lru_cache(maxsize=32)
def _probe_subprocess(name: str, python: str) -> str | None:
    return ProbeRun(name, python).result()


class ProbeRun:
    """One probe running in a subprocess of the job interpreter, started now and awaited later,
    so a slow one (``import unsloth``: ~20 s) can start with the service and be done by the first request.
    Whoever starts it owns it: ``stop()`` ends it if it is still running."""

    def __init__(self, name: str, python: str, timeout: float = PROBE_TIMEOUT_S) -> None:
        self.name, self.python, self.timeout = name, python, timeout
        self._answer: str | None = None
        self._done = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finish; a file, not a pipe: a chatty import cannot block on a full pipe
        if not os.path.exists(python):
            self._finish(f"the job interpreter {python} does not exist")
            return
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            self._proc = subprocess.Popen(
                [python, "-c", f"import common.train.probes as p; p.{name}()"],
                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            )
        except OSError as e:
            self._finish(f"cannot run {python}: {e.strerror}")

    def running(self) -> bool:
        """Whether the probe has not finished yet (never waits)."""
        with self._lock:
            return not self._done and self._proc is not None and self._proc.poll() is None

    def result(self) -> str | None:
        """None when the probe passed, else why not (waits for it, at most ``timeout`` from now)."""
        with self._lock:
            if self._done:
                return self._answer
            assert self._proc is not None
            try:
                rc = self._proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                return self._finish(f"the check timed out after {self.timeout:.0f} s in {self.python}")
            if rc == 0:
                return self._finish(None)
            if rc < 0:
                return self._finish(f"the check was stopped (signal {-rc})")
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").splitlines()
            return self._finish(_last_line(lines) or f"the check exited with {rc} in {self.python}")

    def stop(self) -> None:
        """End the probe if it still runs (a waiting ``result()`` then reports it stopped)."""
        if self._proc is not None and self._proc.poll() is None:
            self._kill()

    def _kill(self) -> None:
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()

    def _finish(self, answer: str | None) -> str | None:
        self._answer, self._done = answer, True
        self._stderr.close()
        return answer


def _last_line(lines: list[str]) -> str:
    text = [ln.strip() for ln in "".join(line if line.endswith("\n") else line + "\n" for line in lines).splitlines()]
    text = [ln for ln in text if ln]
    return text[-1] if text else ""


def job_python(configured: str = "") -> str:
    """The interpreter the local runner starts jobs with (Settings.python_executable, else this one)."""
    return configured or sys.executable


def qlora_problem(runner: str, python: str | None = None) -> str | None:
    """Why method 'qlora' cannot run where this deployment's jobs run, or None."""
    if runner != "local":
        return None  # the training image carries bitsandbytes; the API image does not need it
    reason = probe("bnb_4bit_runs", python)
    if reason is None:
        return None
    return f"customization.method 'qlora' needs bitsandbytes 4-bit, which cannot run where this service's jobs run: {reason}"
