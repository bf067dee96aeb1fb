"""Runs the Postman collection with newman against the stack `make up` started (`make postman`), and
writes the Postman environment with that stack's values for the Postman app.

    make up && make model        # the stack, and the tiny model the finetunes name
    make postman                 # = .venv/bin/python postman/run.py
    .venv/bin/python postman/run.py --environment-only   # only write var/run/trainyard.postman_environment.json

Values come from the same places as the stack's: each component's local URL, the credentials in
var/run (or TRAINYARD_ADMIN_API_KEY / _INTERNAL_TOKEN / _SERVICE_TOKEN when set), the tiny model under
var/models/tiny-llama (or TRAINYARD_MODEL). Folders whose service does not answer are left out, with a
note. tests/test_postman.py runs newman through ``newman_command`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from postman.build_collection import COLLECTION, ENVIRONMENT  # noqa: E402

NEWMAN = shutil.which("newman") or str(HERE / "node_modules" / ".bin" / "newman")
# collection folder -> the component that must answer for it to run (None: the gateway alone)
FOLDERS: dict[str, str | None] = {
    "Gateway: meta": None,
    "Gateway: inference": None,
    "Gateway: datasets and finetunes": None,
    "Gateway: models": None,
    "Dataservice (internal)": None,
    "Trainer service: huggingface": "huggingface",
    "Trainer service: unsloth": "unsloth",
    "Trainer service: dpo": "dpo",
    "Cleanup": None,
}


def newman_command(variables: dict[str, str], folders: list[str], report: Path | None = None,
                   environment: Path = ENVIRONMENT) -> list[str]:
    """The newman invocation: the collection, an environment, the fixtures folder as working dir,
    ``variables`` over the environment's values, only ``folders`` (in the collection's order)."""
    cmd = [NEWMAN, "run", str(COLLECTION), "-e", str(environment), "--working-dir", str(HERE),
           "--timeout-request", "60000", "--color", "off"]
    if report is not None:
        cmd += ["--reporters", "cli,json", "--reporter-json-export", str(report)]
    for key, value in variables.items():
        cmd += ["--env-var", f"{key}={value}"]
    for folder in folders:
        cmd += ["--folder", folder]
    return cmd


def local_values() -> dict[str, str]:
    """The environment's variables for the stack `make up` runs on this machine."""
    from common.settings import VAR, get_settings
    from gateway import localstack

    secrets = localstack.secret_env()
    home = get_settings().home
    values = {
        "gateway_url": localstack.url("gateway"),
        "dataservice_url": localstack.url("gateway"),
        **{f"{name}_url": localstack.url(name) for name in ("huggingface", "unsloth", "dpo")},
        "api_key": secrets["TRAINYARD_ADMIN_API_KEY"],
        "internal_token": secrets["TRAINYARD_INTERNAL_TOKEN"],
        "service_token": secrets["TRAINYARD_SERVICE_TOKEN"],
        "workspace": get_settings().admin_workspace,
        "model": os.environ.get("TRAINYARD_MODEL") or str(home / VAR / "models" / "tiny-llama"),
    }
    return values


def write_environment(values: dict[str, str], path: Path) -> Path:
    """The committed environment with ``values`` filled in, mode 0600 (it holds the stack's keys)."""
    env = json.loads(ENVIRONMENT.read_text())
    env["name"] = "Trainyard (this machine)"
    for entry in env["values"]:
        if entry["key"] in values:
            entry["value"] = values[entry["key"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(env, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="postman/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--environment-only", action="store_true",
                        help="write the environment file for the Postman app and stop")
    args = parser.parse_args()

    from common.settings import VAR, get_settings
    from gateway import localstack

    values = local_values()
    env_file = write_environment(values, get_settings().home / VAR / "run" / "trainyard.postman_environment.json")
    print(f"Postman environment with this stack's values: {env_file} (import it in the Postman app)")
    if args.environment_only:
        return
    if not localstack.healthy("gateway"):
        raise SystemExit(f"the gateway does not answer at {values['gateway_url']}: run `make up` first")
    if not Path(values["model"], "config.json").is_file():
        raise SystemExit(f"no model at {values['model']}: run `make model` first (or set TRAINYARD_MODEL)")
    if not Path(NEWMAN).exists():
        raise SystemExit("newman is not installed: run `make newman` (needs npm)")
    folders = []
    for folder, component in FOLDERS.items():
        if component is None or localstack.healthy(component):
            folders.append(folder)
        else:
            print(f"skipping '{folder}': {component} does not answer at {localstack.url(component)}")
    # the values travel in the 0600 file, never on a command line other users can read
    raise SystemExit(subprocess.run(newman_command({}, folders, environment=env_file)).returncode)


if __name__ == "__main__":
    main()
