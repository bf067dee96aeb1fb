"""The Postman collection: generated without drift, covering every route of the live OpenAPI,
and passing when newman runs it against a locally started stack (real gateway and trainer
service processes, SQLite, file:// storage, the tiny model)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.utils.server import REPO, SERVICE_TOKEN, Server

POSTMAN = REPO / "postman"
NEWMAN = shutil.which("newman") or str(POSTMAN / "node_modules" / ".bin" / "newman")
ADMIN_KEY = "ty_postman_admin_key_0123456789abcdef"
INTERNAL_TOKEN = "postman-internal-token-0123456789"
BASES = {"gateway_url": "public", "dataservice_url": "internal", "huggingface_url": "service",
         "unsloth_url": "service", "dpo_url": "service"}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, POSTMAN / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_collection", POSTMAN / "build_collection.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requests(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        out += _requests(item["item"]) if "item" in item else [item]
    return out


def _norm(path: str) -> str:
    return re.sub(r"\{\{?[^/}]+\}?\}", "{}", path.split("?")[0])


def test_committed_collection_is_the_generated_one() -> None:
    for path, text in _builder().render().items():
        assert path.read_text() == text, f"{path.name} differs from postman/build_collection.py: rerun it"


def test_collection_covers_every_route_of_the_live_openapi() -> None:
    from common.settings import Settings
    from gateway.app import create_app
    from services.huggingface.app import app as service_app

    apps = {"public": create_app(Settings(gateway_serve_internal=False)),
            "internal": create_app(Settings(), public=False), "service": service_app}
    routes = {(name, method.upper(), _norm(path))
              for name, app in apps.items() for path, ops in app.openapi()["paths"].items() for method in ops}
    collection = json.loads((POSTMAN / "trainer-apis.postman_collection.json").read_text())
    covered = set()
    for item in _requests(collection["item"]):
        method, url = item["request"]["method"], item["request"]["url"]
        m = re.match(r"^\{\{(\w+)\}\}(.*)$", url)
        assert m, url
        if m.group(1).endswith("signed_url"):  # the gateway's own upload URL on file:// storage
            covered.add(("public", method, "/v1/uploads/{}"))
            continue
        app, path = BASES[m.group(1)], _norm(m.group(2))
        if (app, method, path) not in routes:  # a literal id, e.g. /jobs/does-not-exist
            templates = [r for r in routes if r[:2] == (app, method)
                         and re.fullmatch(r[2].replace("{}", "[^/]+"), path.replace("{}", "x"))]
            assert len(templates) == 1, f"{method} {url} matches no route (or several): {templates}"
            path = templates[0][2]
        covered.add((app, method, path))
    assert routes - covered == set(), f"routes without a request in the collection: {sorted(routes - covered)}"


@pytest.mark.slow
@pytest.mark.skipif(not Path(NEWMAN).exists(), reason="newman is not installed (make newman)")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_newman_runs_the_collection_against_the_local_stack(
    database_url: str, storage_root: Path, tiny_model: Path, tmp_path: Path
) -> None:
    env = {
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_ROOT": str(storage_root),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "TRAINYARD_CANCEL_GRACE_SECONDS": "3",
        "TRAINYARD_ADMIN_API_KEY": ADMIN_KEY,
        "TRAINYARD_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "TRAINYARD_UPLOAD_SIGNING_SECRET": "postman-signing-secret-0123456789",
        "TRAINYARD_REFRESH_INTERVAL_SECONDS": "0.5",
    }
    run_py = _module("run")  # what `make postman` runs: the same command, every folder
    services: dict[str, Server] = {}
    folders = list(run_py.FOLDERS)
    try:
        for backend in ("huggingface", "unsloth", "dpo"):
            services[backend] = Server(f"services.{backend}.app:app", env,
                                       log_path=tmp_path / f"{backend}.log").start()
        urls = {f"TRAINYARD_SERVICE_URL_{b.upper()}": s.url for b, s in services.items()}
        gateway = Server("gateway.app:app", {**env, **urls}, log_path=tmp_path / "gateway.log").start()
        services["gateway"] = gateway
        report = tmp_path / "newman.json"
        variables = {"gateway_url": gateway.url, "dataservice_url": gateway.url, "api_key": ADMIN_KEY,
                     "internal_token": INTERNAL_TOKEN, "service_token": SERVICE_TOKEN, "model": str(tiny_model),
                     **{f"{b}_url": s.url for b, s in services.items() if b != "gateway"}}
        cmd = run_py.newman_command(variables, folders, report)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        run = json.loads(report.read_text())["run"]
        failures = [f"{f['source'].get('name')}: {f['error'].get('test') or ''} {f['error']['message']}"
                    for f in run["failures"]]
        assert out.returncode == 0 and not failures, "\n".join(failures) + "\n" + out.stdout[-4000:]
        stats = run["stats"]
        assert stats["assertions"]["failed"] == 0 and stats["assertions"]["total"] >= 80, stats
        assert stats["requests"]["failed"] == 0
    finally:
        for s in services.values():
            s.stop()


def test_run_script_writes_the_local_stacks_values_for_the_postman_app(tmp_path: Path) -> None:
    env = {**os.environ, "TRAINYARD_HOME": str(tmp_path)}
    for name in ("TRAINYARD_ADMIN_API_KEY", "TRAINYARD_INTERNAL_TOKEN", "TRAINYARD_SERVICE_TOKEN", "TRAINYARD_MODEL"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, str(POSTMAN / "run.py"), "--environment-only"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "var" / "run" / "trainyard.postman_environment.json"
    assert path.stat().st_mode & 0o777 == 0o600
    values = {v["key"]: v["value"] for v in json.loads(path.read_text())["values"]}
    committed = {v["key"] for v in json.loads((POSTMAN / "trainer-apis.local.postman_environment.json").read_text())["values"]}
    assert set(values) == committed
    run_dir = tmp_path / "var" / "run"
    assert values["api_key"] == (run_dir / "admin-key").read_text().strip()  # the key `make up` seeds
    assert values["internal_token"] == (run_dir / "internal-token").read_text().strip()
    assert values["service_token"] == (run_dir / "service-token").read_text().strip()
    assert values["model"] == str(tmp_path / "var" / "models" / "tiny-llama")
    assert values["gateway_url"] == "http://127.0.0.1:8080"
