"""Library messages that read like failures but ask nothing of the user, silenced by their exact text.

Where a model is loaded (the training program, the inference worker) these came with every job log
and adapter load:

* bitsandbytes' CPU backend logs "Failed to load CPU gemm_4bit_forward ... pip install kernels"
  when the optional ``kernels`` package is absent; it then uses its own CPU kernel, which works;
* transformers warns (FutureWarning) that ``is_gradient_checkpointing`` is deprecated when PEFT
  or TRL call it: a note for those libraries' authors;
* tqdm progress bars (transformers' "Converting and de-quantizing GGUF tensors", downloads,
  dataset maps) are carriage-return noise in a log file; the job's progress lines replace them.

Only these exact messages are filtered: any other warning, from the same libraries too, still shows.
Call ``silence()`` first thing, before those libraries are imported (tqdm reads ``TQDM_DISABLE``
when it is imported). No heavy imports here.
"""

from __future__ import annotations

import logging
import os
import warnings

BNB_CPU_KERNEL_PREFIX = "Failed to load CPU gemm_4bit_forward"
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
FUTURE_WARNINGS = (r"`is_gradient_checkpointing` is deprecated",)
PROGRESS_BAR_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


class _DropMessage(logging.Filter):
    """Drops the records whose unformatted message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence(*, progress_bars: bool = True) -> None:
    """Filter the messages above in this process (an operator's own environment settings win)."""
    logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BNB_CPU_KERNEL_PREFIX))
    for message in FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    if progress_bars:
        for name in PROGRESS_BAR_ENV:
            os.environ.setdefault(name, "1")
