"""BaseTrainerBackend: what a backend provides.

A backend is two halves kept in one class: request-time checks that run in the
API process (no torch import allowed there) and ``train()``, which runs inside
the training program. Services differ only in the backend they are given.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from common.errors import BackendStarting, BackendUnavailable, Unprocessable
from common.schemas import Method, TrainingRequest

if TYPE_CHECKING:
    from common.storage import ObjectStore
    from common.train.reporting import ProgressReporter

@dataclass
class TrainContext:
    """Everything ``train()`` needs, prepared by the training program."""

    job_id: str
    request: TrainingRequest  # secrets included
    train_files: list[Path]
    validation_files: list[Path]
    output_dir: Path  # uploaded to artifacts.output_uri after train() returns
    work_dir: Path
    reporter: ProgressReporter
    extra: dict[str, Any] = field(default_factory=dict)


class BaseTrainerBackend(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.full)
    training_type: ClassVar[str] = "sft"  # sft | dpo
    required_modules: ClassVar[tuple[str, ...]] = ()  # must be importable where jobs run

    def start(self, runner: str) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Service start-up: begin slow availability checks in the background (default: none)."""

    def stop(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Service shutdown: end whatever ``start`` began."""

    def starting(self, runner: str = "local") -> bool:
        """Whether a check ``start`` began is still running (answers at once; default: never)."""
        return False

    def unavailable_reason(self, runner: str = "local") -> str | None:
        """Why this backend cannot run where its jobs run, or None. Never imports the modules.

        Only the local runner runs jobs in this environment; on Kubernetes the training
        image carries the packages and the slim API image rightly lacks them."""
        if runner != "local":
            return None
        missing = [m for m in self.required_modules if importlib.util.find_spec(m) is None]
        return f"missing Python packages: {', '.join(missing)}" if missing else None

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        """Backend-specific constraints; returns readable problems (empty when fine)."""
        problems = []
        if request.customization.method not in self.methods:
            allowed = ", ".join(m.value for m in self.methods)
            problems.append(
                f"customization.method '{request.customization.method.value}' is not supported by the "
                f"{self.name} backend (supported: {allowed})"
            )
        if runner == "kubernetes" and request.resources.gpus < 1 and self.needs_gpu_on_cluster():
            problems.append(f"resources.gpus must be >= 1 for the {self.name} backend on Kubernetes")
        return problems

    def needs_gpu_on_cluster(self) -> bool:
        return True

    def check_inputs(self, request: TrainingRequest, store: ObjectStore) -> list[str]:
        """Cheap request-time looks at the request's objects (e.g. the first row of each dataset,
        a local model's config.json); empty when fine. Whatever cannot be read is left to the job."""
        return []

    def validate(self, request: TrainingRequest, *, runner: str, store: ObjectStore | None = None) -> None:
        """``store`` given (the service): also ``check_inputs``, all problems in one error.

        Raises:
        BackendUnavailable: the backend cannot run on this deployment.
        BackendStarting: its start-up check still runs (the caller may retry soon).
        Unprocessable: the request breaks a backend constraint (all problems listed).
        """
        if self.starting(runner):  # answer now: a caller's deadline is shorter than the check
            raise BackendStarting(
                f"the {self.name} backend is still starting (checking that it loads where jobs run); "
                "try again in a few seconds"
            )
        reason = self.unavailable_reason(runner)
        if reason:
            raise BackendUnavailable(f"the {self.name} backend is unavailable: {reason}")
        problems = self.check(request, runner=runner)
        if store is not None:
            problems += self.check_inputs(request, store)
        if problems:
            raise Unprocessable(problems)

    @abstractmethod
    def train(self, ctx: TrainContext) -> dict[str, Any]:
        """Train, save the result into ``ctx.output_dir``, return metrics for metrics.json."""


def class_path(backend: BaseTrainerBackend) -> str:
    """``module:Class`` of a backend: what a job spec carries so the training program can load it."""
    return f"{type(backend).__module__}:{type(backend).__qualname__}"


def load_backend(ref: str) -> BaseTrainerBackend:
    """A backend from its ``module:Class`` path, or from a trainer's name (its declared ``Component.backend``:
    for specs that carry only the name).

    Raises: BackendUnavailable for an unknown name or a backend module that fails to import."""
    target = ref
    if ":" not in ref:
        from common.components import Kind, of_kind

        trainers = {c.name: c.backend for c in of_kind(Kind.trainer)}
        if ref not in trainers:
            raise BackendUnavailable(f"unknown backend '{ref}' (known: {', '.join(sorted(trainers))})")
        target = trainers[ref]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(f"backend '{ref}' cannot be imported: {e.msg}") from e
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTrainerBackend)):
        raise BackendUnavailable(f"backend '{ref}': {target} is not a trainer backend class")
    return cls()
