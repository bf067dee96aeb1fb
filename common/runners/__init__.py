"""Runners launch the training program: locally as a subprocess or as a Kubernetes Job."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.runners.base import JobRunner, RunnerDeps


def make_runner(deps: RunnerDeps) -> JobRunner:
    """Pick the runner named by settings.runner (local | kubernetes)."""
    name = deps.settings.runner
    if name == "local":
        from common.runners.local import LocalRunner

        return LocalRunner(deps)
    if name == "kubernetes":
        from common.runners.kubernetes import KubernetesRunner

        return KubernetesRunner(deps)
    raise ValueError(f"unknown runner '{name}' (TRAINYARD_RUNNER must be 'local' or 'kubernetes')")
