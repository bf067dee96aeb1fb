"""Every manifest under k8s/ and every Job the runner builds, validated offline.

No cluster, kustomize or kubectl can be relied on here, so the kustomizations are
resolved by this test (resources, namespace, labels, images, merge patches) and each
resulting object is validated with ``kubernetes-validate`` in strict mode against the
oldest and newest Kubernetes versions we support. Where a ``kubectl`` with built-in
kustomize happens to exist, its rendering is cross-checked against ours.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from common.components import Kind, of_kind
from common.runners.k8s_spec import SECRETS_KEY, build_job, build_job_secret, job_name
from common.schemas import Resources
from common.settings import Settings, env_names

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
VERSIONS = ("1.30", "1.37")
OVERLAYS = ["base", "overlays/production", "overlays/kind", "overlays/gpu"]
NAMESPACED = {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding",
              "NetworkPolicy", "PodDisruptionBudget", "Job"}
SETTINGS_ENV = env_names()


def validate(obj: dict[str, Any]) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} invalid for Kubernetes {version} at {where}: {e.message}")


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge as kustomize does it for our patches: maps merge, lists of named items (containers)
    merge item by item on `name`, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif _named(v) and _named(out.get(k)):
            items = {i["name"]: i for i in out[k]}
            for item in v:
                items[item["name"]] = merge(items.get(item["name"], {}), item)
            out[k] = list(items.values())
        else:
            out[k] = copy.deepcopy(v)
    return out


def build(directory: Path, seen: set[Path] | None = None) -> list[dict[str, Any]]:
    """Resolve a kustomization directory into its objects, recording every file it uses in `seen`."""
    seen = seen if seen is not None else set()
    kfile = directory / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    seen.add(kfile)
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    unknown = set(kust) - {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
    assert not unknown, f"{kfile}: this test does not resolve {unknown}; extend build() first"
    objects: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        assert path.exists(), f"{kfile}: resource {res} does not exist"
        if path.is_dir():
            objects += build(path, seen)
        else:
            seen.add(path)
            objects += load(path)
    for p in kust.get("patches", []):
        path = (directory / p["path"]).resolve()
        seen.add(path)
        for patch in load(path):
            targets = [i for i, o in enumerate(objects)
                       if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
            assert len(targets) == 1, f"{path}: patch target {patch['kind']}/{patch['metadata']['name']} not found"
            objects[targets[0]] = merge(objects[targets[0]], patch)
    for obj in objects:
        if kust.get("namespace") and obj["kind"] in NAMESPACED:
            obj["metadata"]["namespace"] = kust["namespace"]
        for lab in kust.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(lab["pairs"])
    images = {i["name"]: i for i in kust.get("images", [])}
    used = set()
    for obj in objects:
        for ctr in containers(obj):
            name, _, tag = ctr["image"].partition(":")
            if name in images:
                used.add(name)
                img = images[name]
                ctr["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    assert used == set(images), f"{kfile}: images {set(images) - used} match no container"
    return objects


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if obj["kind"] in ("Deployment", "Job") else {}
    return pod.get("containers", []) + pod.get("initContainers", [])


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: build(K8S / name) for name in OVERLAYS}


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects in {overlay}"
    for obj in objs:
        validate(obj)
        if obj["kind"] in NAMESPACED:
            assert obj["metadata"]["namespace"] == "trainyard"


def test_every_yaml_file_is_used_or_a_secret_template() -> None:
    seen: set[Path] = set()
    for name in OVERLAYS:
        build(K8S / name, seen)
    templates = set((K8S / "secrets").glob("*.yaml"))
    for path in templates:
        for obj in load(path):
            validate(obj)
    orphans = {p.resolve() for p in K8S.rglob("*.yaml")} - seen - templates
    assert not orphans, f"manifests no kustomization uses: {sorted(map(str, orphans))}"


def test_secret_templates_hold_placeholders_only() -> None:
    for path in (K8S / "secrets").glob("*.yaml"):
        for obj in load(path):
            assert obj["kind"] == "Secret" and "data" not in obj
            for key, value in obj["stringData"].items():
                assert "CHANGE_ME" in value or value == "", f"{path.name}: {key} is not a placeholder"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (kustomize) to cross-check with")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_agrees(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "unknown command" in out.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in theirs:
        validate(obj)
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]
    assert sorted(map(key, theirs)) == sorted(map(key, rendered[overlay]))
    ours = {key(o): o for o in rendered[overlay]}
    for obj in theirs:
        assert obj == ours[key(obj)], f"{key(obj)} renders differently"


# --------------------------------------------------------------------------- semantics


def test_deployments_are_replicated_probed_and_non_root(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["base"]
    services = by_kind(objs, "Service")
    deployments = by_kind(objs, "Deployment")
    assert set(deployments) == {"trainyard-gateway", "trainyard-gateway-internal", "trainyard-huggingface",
                                "trainyard-unsloth", "trainyard-dpo", "trainyard-inference"}
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in by_kind(objs, "PodDisruptionBudget").values()}
    for name, dep in deployments.items():
        assert dep["spec"]["replicas"] >= 2, name
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pod["securityContext"]["runAsNonRoot"] is True
        [ctr] = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert ctr[probe]["httpGet"]["path"] == "/health" and ctr[probe]["httpGet"]["port"] in ports
        assert {"cpu", "memory"} <= set(ctr["resources"]["requests"])
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
        svc = services[name]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
        assert labels["app.kubernetes.io/name"] in pdbs
    for backend, port in ((c.name, c.port) for c in of_kind(Kind.trainer)):
        ctr = deployments[f"trainyard-{backend}"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        assert env["TRAINYARD_PORT"] == str(port) and "TRAINYARD_BACKEND" not in env  # the app is the backend
        assert env["TRAINYARD_PUBLIC_URL"] == f"http://trainyard-{backend}.trainyard.svc:{port + 1000}"
        assert env["TRAINYARD_REPORT_PORT"] == str(port + 1000)
        assert {"secretRef": {"name": "trainyard-service"}} in ctr["envFrom"]
    for component in ("gateway", "gateway-internal"):
        ctr = deployments[f"trainyard-{component}"]["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "trainyard-service"}} in ctr["envFrom"]
        assert deployments[f"trainyard-{backend}"]["spec"]["template"]["spec"]["serviceAccountName"] == "trainyard-runner"
    # each Deployment's `trainyard serve <component>` command: tests/test_dockerfiles.py
    for component in ("gateway", "gateway-internal"):
        pod = deployments[f"trainyard-{component}"]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
    public_env = {e["name"]: e.get("value") for e in deployments["trainyard-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert public_env["TRAINYARD_GATEWAY_SERVE_INTERNAL"] == "false", "/v1/dataservice stays off the public port"


def test_role_allows_exactly_what_the_runner_needs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    [role] = by_kind(rendered["base"], "Role").values()
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("batch", "jobs", "create"), ("batch", "jobs", "get"), ("batch", "jobs", "list"), ("batch", "jobs", "delete"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get"), ("", "secrets", "create"),
    }
    [binding] = by_kind(rendered["base"], "RoleBinding").values()
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainyard-runner", "namespace": "trainyard"}]
    accounts = by_kind(rendered["base"], "ServiceAccount")
    assert accounts["trainyard-job"]["automountServiceAccountToken"] is False
    assert Settings().k8s_service_account in accounts


def test_settings_names_are_real_and_parse(rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    for overlay, objs in rendered.items():
        [config] = by_kind(objs, "ConfigMap").values()
        unknown = set(config["data"]) - SETTINGS_ENV
        assert not unknown, f"{overlay}: ConfigMap keys that Settings does not read: {unknown}"
        for dep in by_kind(objs, "Deployment").values():
            for ctr in containers(dep):
                names = {e["name"] for e in ctr.get("env", []) if e["name"].startswith("TRAINYARD_")}
                assert names <= SETTINGS_ENV, f"{dep['metadata']['name']}: {names - SETTINGS_ENV}"
        for key, value in config["data"].items():
            monkeypatch.setenv(key, value)
        s = Settings()
        assert s.runner == "kubernetes" and s.k8s_config == "in-cluster" and s.k8s_namespace == "trainyard"
        secrets = {o["metadata"]["name"] for p in (K8S / "secrets").glob("*.yaml") for o in load(p)}
        assert set(s.k8s_job_env_secrets) <= secrets
    for path in (K8S / "secrets").glob("*.yaml"):
        for obj in load(path):
            assert {k for k in obj["stringData"] if k.startswith("TRAINYARD_")} <= SETTINGS_ENV


def test_network_policies_keep_internal_ports_internal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = by_kind(rendered["base"], "NetworkPolicy")
    deny = policies["trainyard-default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    open_to_all = [p for pol in policies.values() for rule in pol["spec"].get("ingress", []) if "from" not in rule
                   for p in rule["ports"]]
    assert open_to_all == [{"protocol": "TCP", "port": 8080}], "only the gateway's public port is open to all"
    trainers = policies["trainyard-trainers"]["spec"]
    assert trainers["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "trainer"}
    gateways, jobs = trainers["ingress"]
    [peer] = gateways["from"]
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["gateway", "gateway-internal"]
    assert [p["port"] for p in gateways["ports"]] == [8081, 8082, 8083]
    [peer] = jobs["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "training-job"}
    assert [p["port"] for p in jobs["ports"]] == [9081, 9082, 9083], "training pods reach the report ports only"
    internal = policies["trainyard-gateway-internal"]["spec"]
    assert internal["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "gateway-internal"}
    assert [p["port"] for r in internal["ingress"] for p in r["ports"]] == [8090]
    assert all("from" in r for r in internal["ingress"])
    # the training pods the runner creates carry the label that lets their progress reports in
    job = build_job(Settings(), ROW, ENV)
    assert job.spec.template.metadata.labels["app.kubernetes.io/component"] == "training-job"


# --------------------------------------------------------------------------- runner Jobs

ROW = {"id": "job-0123456789ab", "backend": "huggingface", "spec_uri": "s3://bucket/jobs/job-0123456789ab/spec.json",
       "labels": {"workspace": "ws-1"}, "request": {"resources": {"gpus": 1, "cpus": 4, "memory_gb": 16}}}
SECRETS = json.dumps({"secrets": {"huggingface_token": "hf_XYZZY"}, "progress_token": "tok-XYZZY"})
ENV = {"TRAINYARD_JOB_ID": "job-0123456789ab", "TRAINYARD_PROGRESS_URL": "http://svc:9081/internal/jobs/x/reports",
       "TRAINYARD_STORAGE_URL": "s3://bucket"}


def as_dict(obj: Any) -> dict[str, Any]:
    return client.ApiClient().sanitize_for_serialization(obj)


@pytest.mark.parametrize(
    ("resources", "job_id", "overrides"),
    [
        ({"gpus": 1, "cpus": 4, "memory_gb": 16}, "job-0123456789ab", {}),
        ({"gpus": 0, "cpus": 0.5, "memory_gb": 1.5, "max_duration_minutes": 5}, "a", {}),
        ({"gpus": 8, "gpu_type": "H100", "cpus": 96, "memory_gb": 1024, "max_duration_minutes": 20160}, "x" * 63, {}),
        ({"gpus": 2, "gpu_type": "NVIDIA-A100-SXM4-80GB"}, "job-multi",
         {"k8s_node_selector": {"trainyard.dev/pool": "gpu"}, "k8s_image_pull_secrets": ["regcred"],
          "k8s_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule",
                               "tolerationSeconds": 60}],
          "k8s_images": {"huggingface": "registry.example/train@sha256:" + "0" * 64}, "k8s_job_env_secrets": [],
          "k8s_service_account": ""}),
    ],
)
def test_every_job_the_runner_builds_validates(resources: dict[str, Any], job_id: str, overrides: dict[str, Any]) -> None:
    settings = Settings(**overrides)
    row = {**ROW, "id": job_id, "request": {"resources": resources}}
    job = build_job(settings, row, ENV, replica="svc-0:1")
    body = as_dict(job)
    validate(body)
    secret = as_dict(build_job_secret(settings, job, SECRETS, owner_uid="0c7f0e7e-0000-4000-8000-000000000000"))
    validate(secret)
    assert secret["metadata"]["ownerReferences"][0]["name"] == body["metadata"]["name"] == job_name(job_id)
    assert len(body["metadata"]["name"]) <= 63
    assert "XYZZY" not in json.dumps(body)
    assert secret["stringData"] == {SECRETS_KEY: SECRETS}
    pod = body["spec"]["template"]["spec"]
    [ctr] = pod["containers"]
    gpus = resources.get("gpus", 0)
    assert ctr["resources"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert (ctr["command"][0] == "torchrun") == (gpus > 1)
    minutes = resources.get("max_duration_minutes", Resources.model_fields["max_duration_minutes"].default)
    assert body["spec"]["activeDeadlineSeconds"] == 60 * minutes
    # Pod Security "restricted": what the namespace enforces
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert ctr["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_a_gpu_type_that_is_no_label_value_is_refused() -> None:
    from common.errors import RunnerError

    with pytest.raises(RunnerError, match="gpu_type 'A100 80GB'"):
        build_job(Settings(), {**ROW, "request": {"resources": {"gpus": 1, "gpu_type": "A100 80GB"}}}, ENV)


# --------------------------------------------------------------------------- make e2e-kind


def test_e2e_kind_target_is_documented_and_its_script_parses() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = next(line for line in makefile.splitlines() if line.startswith("e2e-kind:"))
    assert "## " in target, "make help lists only documented targets"
    script = K8S / "overlays" / "kind" / "e2e.sh"
    assert f"bash {script.relative_to(REPO)}" in makefile
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "kubectl apply -k k8s/overlays/kind" in text and "e2e-cancel" in text


def test_inference_runs_on_cpu_by_default_and_on_a_gpu_in_the_gpu_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert "TRAINYARD_SERVICE_URL_INFERENCE" in by_kind(rendered["base"], "ConfigMap")["trainyard-config"]["data"]
    base = by_kind(rendered["base"], "Deployment")["trainyard-inference"]["spec"]["template"]["spec"]
    [ctr] = base["containers"]
    assert ctr["command"][:3] == ["trainyard", "serve", "inference"]
    assert "nvidia.com/gpu" not in ctr["resources"]["requests"] and "tolerations" not in base
    gpu = by_kind(rendered["overlays/gpu"], "Deployment")["trainyard-inference"]["spec"]["template"]["spec"]
    [gctr] = gpu["containers"]
    assert gctr["resources"]["limits"]["nvidia.com/gpu"] == "1" and gctr["image"] == ctr["image"]
    assert gctr["readinessProbe"] == ctr["readinessProbe"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    policies = by_kind(rendered["base"], "NetworkPolicy")
    [rule] = policies["trainyard-inference"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}]
