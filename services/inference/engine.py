"""What an inference engine provides, and the plain data that crosses into the engine's process.

The API process never imports torch: it sends a :class:`GenerationRequest` to a worker process
(``services.inference.worker``), whose :class:`Engine` loads weights and generates. Transformers + PEFT
is the engine today (``hf_engine.TransformersEngine``); a GPU deployment can plug in vLLM's multi-LoRA
engine by implementing the same four methods and naming it in ``TRAINYARD_INFERENCE_ENGINE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

ENGINES = {"transformers": "services.inference.hf_engine:TransformersEngine"}


@dataclass(frozen=True)
class ModelRef:
    """Which weights serve a request: a base model, plus a LoRA adapter for a fine-tuned model."""

    base_model: str
    adapter_uri: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    model: ModelRef
    max_tokens: int
    min_tokens: int = 0  # the end of turn cannot end the answer before this many tokens
    prompt: str | None = None  # raw text (completions), or
    messages: list[dict[str, str]] | None = None  # a conversation, rendered with the model's chat template
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True)
class Started:
    """The model is loaded and the prompt tokenized; text follows."""

    prompt_tokens: int


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (end of turn or a stop sequence) | "length"
    completion_tokens: int
    generation_seconds: float


Event = Started | Text | Finished


@dataclass(frozen=True)
class ExportJob:
    model: ModelRef
    output_uri: str


@dataclass(frozen=True)
class Exported:
    output_uri: str
    files: list[str]
    size_bytes: int
    seconds: float


class Engine(Protocol):
    """One engine per worker process; it is called from one thread, one request at a time.

    Errors are the ``common.errors`` tree: ``NotFound`` (no such base model or adapter),
    ``Unprocessable`` (the request does not fit the model, e.g. chat without a chat template).
    """

    def load(self, model: ModelRef) -> None:
        """Make ``model`` ready (download, load, attach its adapter), evicting the least recently used."""

    def stream(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[Event]:
        """Started, then Text pieces, then Finished; stops early once ``cancelled()`` is true."""

    def export(self, job: ExportJob) -> Exported:
        """Merge the adapter into its base and write full weights + tokenizer to ``job.output_uri``."""

    def loaded(self) -> dict[str, list[str]]:
        """Loaded base models and, for each, the adapters attached to it (for /health and tests)."""
