"""A schema-checked Kubernetes API double, served over real HTTP.

No Kubernetes API server (nor kind, nor a container engine) can run here, so this is
the one boundary the runner tests mock. It is deliberately an HTTP server rather than
a fake client: the runner uses the official ``kubernetes`` client unchanged (a
kubeconfig points it here), so request building, serialisation and response parsing
are the real library's.

What it checks, as an API server would:

* every object created, and every object it returns, validates with
  ``kubernetes-validate`` in strict mode (unknown fields fail) against the oldest and
  newest Kubernetes versions we support;
* names are DNS labels, label keys/values are legal, the body's namespace matches the
  URL, a second create of one name is a 409, a Secret's ownerReferences name a live
  owner, a Job with a podFailurePolicy has ``restartPolicy: Never`` and sorted exit codes;
* every call is authorised against the Role in ``k8s/base/rbac.yaml`` (403 otherwise),
  and the calls made are recorded so tests can check that each rule is needed.

What it simulates, as controllers would: pods created from a Job's template (with
their Secrets resolved or ``CreateContainerConfigError``), container states, the Job
controller's podFailurePolicy / backoffLimit / deadline handling, foreground deletion
of a Job's dependents, TTL cleanup. Tests drive those transitions explicitly.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import yaml

VERSIONS = ("1.30", "1.37")  # oldest and newest schema we promise to be valid for
TOKEN = "fake-token"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

ROUTES = [
    ("jobs", re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?$")),
    ("pods/log", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")),
    ("pods", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$")),
    ("secrets", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$")),
]
KINDS = {"jobs": "Job", "pods": "Pod", "secrets": "Secret"}
API_VERSION = {"Job": "batch/v1", "Pod": "v1", "Secret": "v1"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate(obj: dict[str, Any]) -> list[str]:
    """Strict schema errors for every supported version (empty when valid)."""
    return list(_validate(json.dumps(obj, sort_keys=True)))


@functools.lru_cache(maxsize=4096)
def _validate(text: str) -> tuple[str, ...]:
    obj = json.loads(text)
    errors = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} @ {version}: "
                          f"{'.'.join(str(p) for p in e.path)}: {e.message}")
    return tuple(errors)


def role_rules(path: Path, name: str = "trainyard-runner") -> list[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Role" and doc["metadata"]["name"] == name:
            return doc["rules"]
    raise LookupError(f"no Role {name} in {path}")


@dataclass
class Call:
    verb: str
    resource: str
    name: str | None
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    status: int


@dataclass
class FakeApiServer:
    rules: list[dict[str, Any]]
    namespace: str = "trainyard"
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, name) -> object
    pod_logs: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # schema errors, denied or unknown calls
    lock: threading.RLock = field(default_factory=threading.RLock)
    _server: ThreadingHTTPServer | None = None
    _counted: set[str] = field(default_factory=set)  # failed pods the Job controller has handled

    # ------------------------------------------------------------------ serving

    def start(self) -> FakeApiServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-apiserver").start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "runner", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "runner", "namespace": self.namespace}}],
        }))
        return path

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        query = parse_qs(url.query)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        resource, match = next(((r, m) for r, rx in ROUTES if (m := rx.match(url.path))), (None, None))
        name = match.group("name") if match else None
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete",
                "PUT": "update", "PATCH": "patch"}[method]
        with self.lock:
            if req.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, out = 401, _status(401, "Unauthorized", "no or wrong bearer token")
            elif resource is None or match is None:
                self.problems.append(f"unimplemented call {method} {url.path}")
                status, out = 404, _status(404, "NotFound", f"the fake does not serve {method} {url.path}")
            elif not self._allowed(resource, verb):
                self.problems.append(f"RBAC denies {verb} {resource}")
                status, out = 403, _status(403, "Forbidden", f"{verb} {resource} is not allowed by the Role")
            elif match.group("ns") != self.namespace:
                status, out = 403, _status(403, "Forbidden", f"namespace {match.group('ns')} is not ours")
            else:
                try:
                    status, out = self._serve(resource, verb, name, query, body)
                except ApiError as e:
                    status, out = e.code, _status(e.code, e.reason, e.message)
            self.calls.append(Call(verb, resource or url.path, name, query, body, status))
        data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
        req.send_response(status)
        req.send_header("Content-Type", "text/plain" if isinstance(out, str) else "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _allowed(self, resource: str, verb: str) -> bool:
        return any(resource in r["resources"] and verb in r["verbs"] for r in self.rules)

    # ------------------------------------------------------------------ the API

    def _serve(self, resource: str, verb: str, name: str | None, query: dict[str, list[str]],
               body: dict[str, Any] | None) -> tuple[int, Any]:
        kind = KINDS.get(resource, "Pod")
        if verb == "create":
            return 201, self._returned(self.create(kind, body or {}))
        if verb == "list":
            selector = _selector(query.get("labelSelector", [""])[0])
            items = [self._returned(o) for (k, _), o in sorted(self.objects.items())
                     if k == kind and all(o["metadata"].get("labels", {}).get(a) == b for a, b in selector.items())]
            return 200, {"apiVersion": API_VERSION[kind], "kind": f"{kind}List",
                         "metadata": {"resourceVersion": "1"}, "items": items}
        obj = self.objects.get((kind, name or ""))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        if resource == "pods/log":
            return 200, self._log(obj, query)
        if verb == "get":
            return 200, self._returned(obj)
        if verb == "delete":
            self.delete(kind, name or "", (body or {}).get("propagationPolicy"))
            return 200, {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success",
                         "details": {"name": name, "kind": resource}}
        raise ApiError(405, "MethodNotAllowed", f"{verb} {resource} is not simulated")

    def _returned(self, obj: dict[str, Any]) -> dict[str, Any]:
        errors = validate(obj)
        if errors:
            self.problems.extend(f"fake returned an invalid object: {e}" for e in errors)
        return copy.deepcopy(obj)

    def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        if obj.get("kind") != kind or obj.get("apiVersion") != API_VERSION[kind]:
            raise ApiError(400, "BadRequest", f"expected {API_VERSION[kind]} {kind}, got {obj.get('apiVersion')} {obj.get('kind')}")
        errors = validate(obj)
        if errors:
            self.problems.extend(errors)
            raise ApiError(422, "Invalid", "; ".join(errors))
        meta = obj["metadata"]
        self._check_meta(kind, meta)
        if (kind, meta["name"]) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{meta["name"]}" already exists')
        for ref in meta.get("ownerReferences", []):
            owner = self.objects.get((ref["kind"], ref["name"]))
            if owner is None or owner["metadata"]["uid"] != ref["uid"]:
                raise ApiError(422, "Invalid", f"ownerReference {ref['kind']}/{ref['name']} names no live object")
        meta.update(namespace=self.namespace, uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion="1")
        if kind == "Job":
            self._admit_job(obj)
        if kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        self.objects[(kind, meta["name"])] = obj
        return obj

    def _check_meta(self, kind: str, meta: dict[str, Any]) -> None:
        name = meta.get("name", "")
        if not DNS_LABEL.match(name) or len(name) > 63:
            raise ApiError(422, "Invalid", f"metadata.name '{name}' is not a DNS-1123 label of at most 63 chars")
        if meta.get("namespace", self.namespace) != self.namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
        for k, v in (meta.get("labels") or {}).items():
            prefix, _, key = k.rpartition("/")
            if not LABEL_NAME.match(key) or len(key) > 63 or len(prefix) > 253:
                raise ApiError(422, "Invalid", f"label key '{k}' is invalid")
            if len(v) > 63 or not LABEL_VALUE.match(v):
                raise ApiError(422, "Invalid", f"label value '{v}' of '{k}' is invalid")

    def _admit_job(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        pod = spec["template"]["spec"]
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            raise ApiError(422, "Invalid", "spec.template.spec.restartPolicy must be Never or OnFailure for a Job")
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
            if pod["restartPolicy"] != "Never":
                raise ApiError(422, "Invalid", "podFailurePolicy requires restartPolicy Never")
            codes = (rule.get("onExitCodes") or {}).get("values", [])
            if codes != sorted(set(codes)) or (rule.get("onExitCodes", {}).get("operator") == "In" and 0 in codes):
                raise ApiError(422, "Invalid", f"podFailurePolicy.rules[{i}].onExitCodes.values must be sorted, unique, non-zero")
        uid = job["metadata"]["uid"]
        tlabels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
        tlabels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": job["metadata"]["name"]})
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        job["status"] = {}

    def delete(self, kind: str, name: str, propagation: str | None) -> None:
        obj = self.objects.pop((kind, name))
        uid = obj["metadata"]["uid"]
        if propagation == "Orphan" or (propagation is None and kind == "Job"):
            return  # batch/v1 Jobs deleted through the API orphan their pods by default
        for key, dep in list(self.objects.items()):
            if any(r["uid"] == uid for r in dep["metadata"].get("ownerReferences", [])):
                self.objects.pop(key)

    def _log(self, pod: dict[str, Any], query: dict[str, list[str]]) -> str:
        container = query.get("container", [None])[0]
        names = [c["name"] for c in pod["spec"]["containers"]]
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod['metadata']['name']}")
        state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
        if "waiting" in state:
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{pod["metadata"]["name"]}" '
                           f"is waiting to start: {state['waiting'].get('reason')}")
        lines = self.pod_logs.get(pod["metadata"]["name"], [])
        tail = query.get("tailLines", [None])[0]
        if tail is not None:
            lines = lines[-int(tail):]
        return "".join(line + "\n" for line in lines)

    # ------------------------------------------------------------------ controllers (tests drive these)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects[(kind, name)]

    def jobs(self) -> list[dict[str, Any]]:
        return [o for (k, _), o in sorted(self.objects.items()) if k == "Job"]

    def pods_of(self, job_name: str) -> list[dict[str, Any]]:
        return [o for (k, _), o in sorted(self.objects.items())
                if k == "Pod" and o["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job_name]

    def add_pod(self, name: str, labels: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
        """A pod that is not a Job's, e.g. a service replica (for the owner-liveness check)."""
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {},
                            "uid": str(uuid.uuid4()), "creationTimestamp": now()},
               "spec": {"containers": [{"name": "app", "image": "trainyard/service:test"}]},
               "status": {"phase": phase}}
        self.objects[("Pod", name)] = pod
        return pod

    def start_pod(self, job_name: str, node: str = "gpu-node-1") -> str:
        """The Job controller creates a pod; the scheduler binds it; the kubelet resolves its Secrets."""
        with self.lock:
            job = self.get("Job", job_name)
            tpl = copy.deepcopy(job["spec"]["template"])
            name = f"{job_name}-{uuid.uuid4().hex[:5]}"
            tpl["spec"]["nodeName"] = node
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {**tpl.get("metadata", {}), "name": name, "namespace": self.namespace,
                                "uid": str(uuid.uuid4()), "creationTimestamp": now(),
                                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                                     "uid": job["metadata"]["uid"], "controller": True,
                                                     "blockOwnerDeletion": True}]},
                   "spec": tpl["spec"],
                   "status": {"phase": "Pending", "conditions": [_cond("PodScheduled", "True")]}}
            missing = self._missing_secret(pod)
            waiting = ({"reason": "CreateContainerConfigError", "message": f'secret "{missing}" not found'}
                       if missing else {"reason": "ContainerCreating"})
            pod["status"]["containerStatuses"] = [self._cstatus(pod, {"waiting": waiting})]
            errors = validate(pod)
            assert not errors, errors
            self.objects[("Pod", name)] = pod
            self._sync(job)
            return name

    def _missing_secret(self, pod: dict[str, Any]) -> str | None:
        for c in pod["spec"]["containers"]:
            refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            refs += [{"name": e["secretRef"]["name"]} for e in c.get("envFrom", []) if "secretRef" in e]
            for ref in refs:
                secret = self.objects.get(("Secret", ref["name"]))
                if secret is None or ("key" in ref and ref["key"] not in secret.get("data", {})):
                    return ref["name"]
        return None

    def _cstatus(self, pod: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        c = pod["spec"]["containers"][0]
        return {"name": c["name"], "image": c["image"], "imageID": "", "ready": "running" in state,
                "restartCount": 0, "started": "running" in state, "state": state}

    def secret_env(self, pod_name: str) -> dict[str, str]:
        """What the kubelet would put into the container's environment from Secrets."""
        pod = self.get("Pod", pod_name)
        out: dict[str, str] = {}
        for c in pod["spec"]["containers"]:
            for e in c.get("envFrom", []):
                data = self.get("Secret", e["secretRef"]["name"]).get("data", {})
                out.update({k: base64.b64decode(v).decode() for k, v in data.items()})
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    out[e["name"]] = base64.b64decode(self.get("Secret", ref["name"])["data"][ref["key"]]).decode()
        return out

    def set_waiting(self, pod_name: str, reason: str, message: str = "") -> None:
        with self.lock:
            pod = self.get("Pod", pod_name)
            pod["status"]["containerStatuses"] = [self._cstatus(pod, {"waiting": {"reason": reason, "message": message}})]

    def unschedulable(self, pod_name: str, message: str) -> None:
        with self.lock:
            pod = self.get("Pod", pod_name)
            pod["spec"].pop("nodeName", None)
            pod["status"] = {"phase": "Pending", "conditions": [_cond("PodScheduled", "False", "Unschedulable", message)]}

    def run(self, pod_name: str, *log_lines: str) -> None:
        with self.lock:
            pod = self.get("Pod", pod_name)
            missing = self._missing_secret(pod)
            assert missing is None, f"kubelet cannot start {pod_name}: secret {missing} not found"
            pod["status"].update(phase="Running", startTime=now(), conditions=[
                _cond("PodScheduled", "True"), _cond("Initialized", "True"), _cond("Ready", "True")])
            pod["status"]["containerStatuses"] = [self._cstatus(pod, {"running": {"startedAt": now()}})]
            self.pod_logs.setdefault(pod_name, []).extend(log_lines)
            self._sync(self.get("Job", pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]))

    def exit(self, pod_name: str, code: int, reason: str | None = None, *log_lines: str,
             conditions: list[dict[str, Any]] | None = None) -> None:
        """The container ends; the Job controller applies the Job's podFailurePolicy and backoffLimit."""
        with self.lock:
            pod = self.get("Pod", pod_name)
            self.pod_logs.setdefault(pod_name, []).extend(log_lines)
            term = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                    "startedAt": now(), "finishedAt": now()}
            pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            pod["status"]["containerStatuses"] = [self._cstatus(pod, {"terminated": term})]
            pod["status"]["conditions"] = [*pod["status"].get("conditions", []), *(conditions or [])]
            self._sync(self.get("Job", pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]))

    def disrupt(self, pod_name: str, reason: str = "EvictionByEvictionAPI") -> None:
        """A node drain/preemption: DisruptionTarget, then SIGTERM (exit 143)."""
        self.exit(pod_name, 143, "Error", conditions=[
            _cond("DisruptionTarget", "True", reason, "Eviction API: evicting")])

    def exceed_deadline(self, job_name: str) -> None:
        with self.lock:
            job = self.get("Job", job_name)
            for pod in self.pods_of(job_name):
                self.objects.pop(("Pod", pod["metadata"]["name"]))
            self._finish(job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")

    def expire(self, job_name: str) -> None:
        """ttlSecondsAfterFinished passed: the TTL controller deletes the Job in the background."""
        with self.lock:
            self.delete("Job", job_name, "Background")

    def _sync(self, job: dict[str, Any]) -> None:
        """The Job controller's view of its pods (single completion, non-indexed)."""
        spec, status = job["spec"], job["status"]
        if any(c["type"] in ("Complete", "Failed") for c in status.get("conditions", [])):
            return
        pods = self.pods_of(job["metadata"]["name"])
        for pod in pods:
            pname = pod["metadata"]["name"]
            if pod["status"]["phase"] != "Failed" or pname in self._counted:
                continue
            self._counted.add(pname)
            action = _match_policy(spec.get("podFailurePolicy"), pod)
            if action == "Ignore":
                self.start_pod(job["metadata"]["name"])  # replaced, not counted
                return
            if action == "FailJob":
                return self._finish(job, "Failed", "PodFailurePolicy",
                                    f"Container train for pod {self.namespace}/{pname} failed with exit code "
                                    f"{_terminated(pod)['exitCode']} matching FailJob rule")
            status["failed"] = status.get("failed", 0) + 1
        pods = self.pods_of(job["metadata"]["name"])
        status["active"] = sum(p["status"]["phase"] in ("Pending", "Running") for p in pods)
        if not status["active"]:
            status.pop("active")
        status.setdefault("startTime", now())
        if status.get("failed", 0) > spec.get("backoffLimit", 6):
            return self._finish(job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if any(p["status"]["phase"] == "Succeeded" for p in pods):
            status["succeeded"] = 1
            status["completionTime"] = now()
            self._finish(job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods",
                         pre="SuccessCriteriaMet")

    def _finish(self, job: dict[str, Any], type_: str, reason: str, message: str, pre: str | None = None) -> None:
        status = job["status"]
        status.pop("active", None)
        conds = status.setdefault("conditions", [])
        conds.append(_cond(pre or "FailureTarget", "True", reason, message))
        conds.append(_cond(type_, "True", reason, message))
        assert not validate(job), validate(job)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _cond(type_: str, status: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    c = {"type": type_, "status": status, "lastTransitionTime": now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _selector(s: str) -> dict[str, str]:
    out = {}
    for part in filter(None, s.split(",")):
        if "=" not in part or "!=" in part:
            raise ApiError(400, "BadRequest", f"the fake supports equality selectors only: {part}")
        k, _, v = part.partition("=")
        out[k.strip()] = v.lstrip("=").strip()
    return out


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def _match_policy(policy: dict[str, Any] | None, pod: dict[str, Any]) -> str:
    """The first podFailurePolicy rule matching a failed pod, as the Job controller evaluates it."""
    for rule in (policy or {}).get("rules", []):
        on_exit = rule.get("onExitCodes")
        if on_exit:
            term = _terminated(pod)
            inside = term["exitCode"] in on_exit["values"]
            if (on_exit["operator"] == "In") == inside:
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if any(c["type"] == pattern["type"] and c["status"] == pattern.get("status", "True")
                   for c in pod["status"].get("conditions", [])):
                return rule["action"]
    return "Count"
