"""Exit codes of the training program and what they mean to a runner.

Both runners map a finished process (or pod container) to a JobError through
``describe()``, so a failure reads the same locally and on a cluster.
"""

from __future__ import annotations

OK = 0
FAILED = 1
INVALID_INPUT = 65  # bad dataset, bad spec, unsupported model: the user's to fix
MODEL_LOAD = 66  # base model or weights could not be loaded
OOM = 86  # torch out-of-memory caught inside the program
CANCELLED = 143  # SIGTERM (cancel / pod eviction)
KILLED = 137  # SIGKILL, usually the kernel OOM killer

_CODES: dict[int, tuple[str, str]] = {
    FAILED: ("training_failed", "training failed"),
    INVALID_INPUT: ("invalid_input", "the job's input was rejected"),
    MODEL_LOAD: ("model_load_failed", "the base model could not be loaded"),
    OOM: ("out_of_memory", "out of memory: lower batch_size or max_sequence_length, or use qlora"),
    CANCELLED: ("terminated", "terminated by SIGTERM"),
    KILLED: ("killed", "killed (SIGKILL; often the out-of-memory killer)"),
}


def describe(returncode: int) -> tuple[str, str]:
    """(error code, human message) for a non-zero exit; negative codes are signals."""
    if returncode < 0:
        returncode = 128 - returncode
    return _CODES.get(returncode, ("training_failed", f"training program exited with code {returncode}"))
