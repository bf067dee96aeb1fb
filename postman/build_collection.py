"""Writes trainer-apis.postman_collection.json and the local environment file.

The collection is generated, not hand-edited: the public and the internal (/v1/dataservice)
gateway flows are the same requests under different auth, and the tests that assert status
codes and fields are easier to keep uniform in one place. Run after changing it:

    .venv/bin/python postman/build_collection.py

tests/test_postman.py fails when the committed JSON differs from this output, when a route of
the live OpenAPI (gateway, internal gateway, trainer service) has no request here, and when
newman's run against a locally started stack has a failing assertion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COLLECTION = HERE / "trainer-apis.postman_collection.json"
ENVIRONMENT = HERE / "trainer-apis.local.postman_environment.json"

# A few rows of examples/sft/train.jsonl: valid chat data for the dataset flows.
ROWS = [
    {"messages": [{"role": "user", "content": "reverse: goat sheep cat car boat"},
                  {"role": "assistant", "content": "boat car cat sheep goat"}]},
    {"messages": [{"role": "user", "content": "reverse: pink fish plum box"},
                  {"role": "assistant", "content": "box plum fish pink"}]},
    {"messages": [{"role": "user", "content": "reverse: yellow apple"}, {"role": "assistant", "content": "apple yellow"}]},
    {"messages": [{"role": "user", "content": "reverse: red door blue sky"},
                  {"role": "assistant", "content": "sky blue door red"}]},
]
DATASET_JSONL = "".join(json.dumps(r) + "\n" for r in ROWS)

VARIABLES = {  # name -> (default, description)
    "gateway_url": ("http://localhost:8080", "The public gateway (make up: :8080)."),
    "dataservice_url": ("http://localhost:8080", "Where /v1/dataservice is served: the gateway locally, "
                        "the trainyard-gateway-internal Service (:8090) in a cluster."),
    "huggingface_url": ("http://localhost:8081", "HuggingFace trainer service."),
    "unsloth_url": ("http://localhost:8082", "Unsloth trainer service."),
    "dpo_url": ("http://localhost:8083", "DPO trainer service."),
    "api_key": ("", "A gateway API key (make up: var/run/admin-key; or TRAINYARD_ADMIN_API_KEY, "
                "`trainyard keys create`)."),
    "service_token": ("", "TRAINYARD_SERVICE_TOKEN, the gateway's credential on the trainer services "
                      "(make up: var/run/service-token)."),
    "internal_token": ("", "TRAINYARD_INTERNAL_TOKEN, for /v1/dataservice (make up: var/run/internal-token)."),
    "workspace": ("default", "Workspace the internal calls act on (x-workspace-id)."),
    "model": ("/absolute/path/to/trainyard/var/models/tiny-llama",
              "Base model of the finetunes and jobs: the tiny model `make model` builds (its absolute path; "
              "postman/run.py fills it in), any path under TRAINYARD_MODEL_DIRS, or a hub id."),
    "dataset_jsonl": (DATASET_JSONL, "The file uploaded to the signed URLs."),
}
TERMINAL = ["completed", "failed", "cancelled"]
HYPERPARAMETERS = {  # quick on the tiny model; the runs are cancelled anyway
    "max_steps": 100000, "learning_rate": 0.003, "batch_size": 4, "lora_r": 8, "lora_alpha": 16,
    "lora_dropout": 0.0, "precision": "fp32", "max_sequence_length": 128, "logging_steps": 1,
}


# --------------------------------------------------------------------------- building blocks


def js(*lines: str) -> list[str]:
    return list(lines)


def ok(*checks: str) -> list[str]:
    """200 with the contract's success envelope, then `checks` on `data`."""
    return js(
        "const body = pm.response.json();",
        "pm.test('200 with success: true', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(body.success).to.eql(true);",
        "});",
        "const data = body.data;",
        *checks,
    )


def error(status: int, name: str | None = None) -> list[str]:
    """The one error envelope: {error, detail, status_code}."""
    lines = [
        f"pm.test('{status} error envelope', () => {{",
        f"  pm.response.to.have.status({status});",
        "  const b = pm.response.json();",
        "  pm.expect(b).to.have.all.keys('error', 'detail', 'status_code');",
        f"  pm.expect(b.status_code).to.eql({status});",
    ]
    if name:
        lines.append(f"  pm.expect(b.error).to.eql('{name}');")
    return [*lines, "});"]


def check(title: str, expr: str) -> str:
    return f"pm.test({json.dumps(title)}, () => {{ {expr}; }});"


def save(var: str, expr: str) -> str:
    return f"pm.collectionVariables.set('{var}', {expr});"


def request(name: str, method: str, url: str, *, tests: list[str], headers: dict[str, str] | None = None,
            body: Any = None, raw: str | None = None, form: list[dict[str, str]] | None = None,
            prerequest: list[str] | None = None, description: str = "",
            auth: dict[str, Any] | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"method": method, "header": [{"key": k, "value": v} for k, v in (headers or {}).items()],
                           "url": url}
    if auth is not None:
        req["auth"] = auth
    if body is not None:
        req["header"].append({"key": "Content-Type", "value": "application/json"})
        req["body"] = {"mode": "raw", "raw": json.dumps(body, indent=2), "options": {"raw": {"language": "json"}}}
    elif raw is not None:
        req["body"] = {"mode": "raw", "raw": raw}
    elif form is not None:
        req["body"] = {"mode": "formdata", "formdata": form}
    if description:
        req["description"] = description
    # each script in a block: its consts must not collide with the sandbox's legacy globals (`data`, ...)
    events = [{"listen": "test", "script": {"type": "text/javascript", "exec": ["{", *tests, "}"]}}]
    if prerequest:
        events.insert(0, {"listen": "prerequest", "script": {"type": "text/javascript", "exec": ["{", *prerequest, "}"]}})
    return {"name": name, "event": events, "request": req}


def folder(name: str, description: str, items: list[dict[str, Any]],
           auth: dict[str, Any] | None = None) -> dict[str, Any]:
    """``auth`` applies to every request inside that sets none of its own."""
    out: dict[str, Any] = {"name": name, "description": description, "item": items}
    if auth is not None:
        out["auth"] = auth
    return out


# What a caller of the trainer services presents; and no credential at all.
SERVICE_AUTH = {"type": "bearer", "bearer": [{"key": "token", "value": "{{service_token}}", "type": "string"}]}
NO_AUTH = {"type": "noauth"}


def wait_for(name: str, url: str, headers: dict[str, str], *, until: str, outcome: list[str], tries: int = 240) -> dict[str, Any]:
    """GET url again (every 0.5 s, at most `tries` times) while `until` (a JS condition on `data`) is false."""
    return request(name, "GET", url, headers=headers, tests=js(
        "const data = pm.response.json().data;",
        "const tries = Number(pm.collectionVariables.get('tries') || 0);",
        f"if (!({until}) && tries < {tries}) {{",
        "  pm.collectionVariables.set('tries', tries + 1);",
        "  setTimeout(() => {}, 500);",
        "  postman.setNextRequest(pm.info.requestName);",
        "} else {",
        "  pm.collectionVariables.set('tries', 0);",
        "  pm.test('200', () => pm.response.to.have.status(200));",
        *("  " + line for line in outcome),
        "}",
    ), description="Polls until the condition holds (newman runs it again with setNextRequest).")


# --------------------------------------------------------------------------- the gateway flow


def gateway_flow(label: str, base: str, prefix: str, auth: dict[str, str], v: str) -> list[dict[str, Any]]:
    """Datasets then finetunes through one face of the gateway; `v` prefixes the variables it saves."""
    ds, ft = f"{base}{prefix}/datasets", f"{base}{prefix}/finetune"
    dataset_items = [
        request("Create dataset without credentials", "POST", ds, body={"name": "train.jsonl"}, tests=error(401)),
        request("Create dataset", "POST", ds, headers=auth,
                body={"name": "train.jsonl", "provider": "huggingface", "model": "{{model}}", "type": "training"},
                tests=ok(check("id, signed_url and s3_path", "pm.expect(data).to.include.keys('id', 'signed_url', 's3_path', 'expires_at')"),
                         check("key under ingestion/", "pm.expect(data.s3_path).to.match(/^users\\/[^/]+\\/projects\\/[^/]+\\/ingestion\\//)"),
                         save(f"{v}dataset_id", "data.id"), save(f"{v}signed_url", "data.signed_url"),
                         save(f"{v}s3_path", "data.s3_path"))),
        request("Upload the file to signed_url", "PUT", f"{{{{{v}signed_url}}}}", raw="{{dataset_jsonl}}",
                tests=js(check("200", "pm.response.to.have.status(200)")),
                description="No API key: the signed URL is the credential. S3's presigned PUT on s3:// storage, "
                "the gateway's PUT /v1/uploads/{dataset_id}?expires=&sig= on file:// storage."),
        request("Attach the uploaded file", "PUT", f"{ds}/{{{{{v}dataset_id}}}}", headers=auth,
                body={"s3_path": f"{{{{{v}s3_path}}}}"},
                tests=ok(check("uploaded", "pm.expect(data.status).to.eql('uploaded')"),
                         check("size known", "pm.expect(data.size_bytes).to.be.above(0)"),
                         save(f"{v}dataset_uri", "data.uri"))),
        request("Get dataset", "GET", f"{ds}/{{{{{v}dataset_id}}}}", headers=auth,
                tests=ok(check("same id", f"pm.expect(data.id).to.eql(pm.collectionVariables.get('{v}dataset_id'))"),
                         check("fields", "pm.expect(data).to.include.keys('name', 'type', 'status', 'rows', 'validation_status')"))),
        request("List datasets", "GET", f"{ds}?limit=100", headers=auth,
                tests=ok(check("listed", f"pm.expect(data.map(d => d.id)).to.include(pm.collectionVariables.get('{v}dataset_id'))"),
                         check("count", "pm.expect(body.count).to.be.at.least(1)"))),
        request("Renew signed URL", "POST", f"{ds}/{{{{{v}dataset_id}}}}/signed_url", headers=auth,
                tests=ok(check("a new URL", "pm.expect(data.signed_url).to.be.a('string').and.not.empty"))),
        request("Upload a small file directly (multipart)", "POST", f"{ds}/upload", headers=auth,
                form=[{"key": "file", "type": "file", "src": "fixtures/sample.jsonl"},
                      {"key": "type", "type": "text", "value": "validation"}],
                tests=ok(check("uploaded", "pm.expect(data.status).to.eql('uploaded')"),
                         check("validation type", "pm.expect(data.type).to.eql('validation')"),
                         save(f"{v}upload_id", "data.id"))),
        request("Delete dataset", "DELETE", f"{ds}/{{{{{v}upload_id}}}}", headers=auth, tests=ok()),
        request("Get deleted dataset", "GET", f"{ds}/{{{{{v}upload_id}}}}", headers=auth, tests=error(404)),
    ]
    finetune_items = [
        request("Create finetune", "POST", ft, headers={**auth, "Idempotency-Key": f"{{{{{v}create_key}}}}"},
                body={"name": f"postman {label}", "provider": "huggingface", "model": "{{model}}",
                      "hyperparameters": HYPERPARAMETERS},
                prerequest=[save(f"{v}create_key", "pm.variables.replaceIn('{{$guid}}')")],
                tests=ok(check("created", "pm.expect(data.status).to.eql('created')"), save(f"{v}finetune_id", "data.id"))),
        request("Create finetune again with the same Idempotency-Key", "POST", ft,
                headers={**auth, "Idempotency-Key": f"{{{{{v}create_key}}}}"},
                body={"name": f"postman {label}", "provider": "huggingface", "model": "{{model}}",
                      "hyperparameters": HYPERPARAMETERS},
                description="A retry: the first response comes back and nothing new is created.",
                tests=ok(check("the same finetune", f"pm.expect(data.id).to.eql(pm.collectionVariables.get('{v}finetune_id'))"),
                         check("replayed", "pm.expect(pm.response.headers.get('Idempotent-Replayed')).to.eql('true')"))),
        request("Start before validation", "POST", f"{ft}/{{{{{v}finetune_id}}}}/start", headers=auth, body={},
                tests=error(409, "conflict")),
        request("Attach the training dataset", "PUT", f"{ft}/{{{{{v}finetune_id}}}}", headers=auth,
                body={"training_dataset_id": f"{{{{{v}dataset_id}}}}"},
                tests=ok(check("attached", f"pm.expect(data.training_dataset_id).to.eql(pm.collectionVariables.get('{v}dataset_id'))"),
                         check("back to created", "pm.expect(data.status).to.eql('created')"))),
        request("Start validation", "POST", f"{ft}/{{{{{v}finetune_id}}}}/validation/start", headers=auth,
                tests=ok(check("validation under way", "pm.expect(data.status).to.match(/^pk_dataset_validation_/)"))),
        wait_for("Wait for validation", f"{ft}/{{{{{v}finetune_id}}}}", auth,
                 until="data.status !== 'pk_dataset_validation_in_progress'",
                 outcome=[check("validation succeeded", "pm.expect(data.status).to.eql('pk_dataset_validation_successfull')"),
                          check("rows counted", f"pm.expect(data.validation.training.rows).to.eql({len(ROWS)})")]),
        request("List finetunes", "GET", f"{ft}?limit=100", headers=auth,
                tests=ok(check("listed", f"pm.expect(data.map(f => f.id)).to.include(pm.collectionVariables.get('{v}finetune_id'))"))),
        request("Start finetune", "POST", f"{ft}/{{{{{v}finetune_id}}}}/start", headers=auth, body={},
                tests=ok(check("started", "pm.expect(['pending', 'running']).to.include(data.status)"),
                         check("has a job", "pm.expect(data.job_id).to.be.a('string')"))),
        request("Get finetune", "GET", f"{ft}/{{{{{v}finetune_id}}}}", headers=auth,
                tests=ok(check("fields", "pm.expect(data).to.include.keys('status', 'progress', 'metrics', 'job_id', 'output_uri')"),
                         check("provider", "pm.expect(data.provider).to.eql('huggingface')"))),
        request("Finetune events", "GET", f"{ft}/{{{{{v}finetune_id}}}}/events", headers=auth,
                tests=ok(check("events", "pm.expect(data).to.be.an('array').that.is.not.empty"),
                         check("starts at created", "pm.expect(data[0].data.status).to.eql('created')"))),
        request("Finetune logs", "GET", f"{ft}/{{{{{v}finetune_id}}}}/logs?tail=20", headers=auth,
                tests=ok(check("log lines", "pm.expect(data.logs).to.be.an('array')"))),
        request("Cancel finetune", "POST", f"{ft}/{{{{{v}finetune_id}}}}/cancel", headers=auth,
                tests=ok(check("cancelled", "pm.expect(data.status).to.eql('cancelled')"))),
        request("Finetune artifacts", "GET", f"{ft}/{{{{{v}finetune_id}}}}/artifacts", headers=auth,
                tests=ok(check("the cancelled run", "pm.expect(data.runs[0].status).to.eql('cancelled')"),
                         check("files or a note", "data.runs.forEach(r => pm.expect(r.files.length > 0 || !!r.note).to.be.true)"),
                         save(f"{v}run_job_id", "data.runs[0].job_id"))),
        request("Get unknown finetune", "GET", f"{ft}/does-not-exist", headers=auth, tests=error(404)),
    ]
    if label == "public":  # signed downloads are served by the public gateway only
        finetune_items.append(request(
            "Download with a forged signature", "GET",
            f"{ft}/{{{{{v}finetune_id}}}}/runs/{{{{{v}run_job_id}}}}/files/adapter_config.json?expires=1&sig=forged",
            tests=error(403)))
    items = dataset_items + finetune_items
    if label != "public":  # request names must be unique: setNextRequest jumps by name
        for item in items:
            item["name"] = f"{item['name']} ({label})"
    return items


def model_items(base: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    """The registry's OpenAI-shaped routes. The finetune of the flow was cancelled, so it has no model."""
    models = f"{base}/v1/models"
    return [
        request("List models without credentials", "GET", models, tests=error(401)),
        request("List models", "GET", models, headers=auth, tests=js(
            "const body = pm.response.json();",
            check("200, OpenAI's list shape", "pm.response.to.have.status(200); pm.expect(body.object).to.eql('list')"),
            check("model objects", "body.data.forEach(m => pm.expect(m).to.include.keys('id', 'object', 'created', 'owned_by', 'kind'))"),
            check("base models of the catalog", "pm.expect(body.data.filter(m => m.kind === 'base')).to.not.be.empty"),
            check("no model of a cancelled finetune",
                  "pm.expect(body.data.map(m => m.id)).to.not.include('ft:' + pm.collectionVariables.get('finetune_id'))"),
            save("base_model_id", "body.data.find(m => m.kind === 'base').id"),
        )),
        request("Get a base model", "GET", f"{models}/{{{{base_model_id}}}}", headers=auth, tests=js(
            "const model = pm.response.json();",
            check("200", "pm.response.to.have.status(200)"),
            check("same id", "pm.expect(model.id).to.eql(pm.collectionVariables.get('base_model_id'))"),
            check("a base model", "pm.expect(model.object).to.eql('model'); pm.expect(model.kind).to.eql('base')"),
        ), description="Base model ids are hub ids; their slash may be sent as is or as %2F."),
        request("Get the cancelled finetune's model", "GET", f"{models}/ft:{{{{finetune_id}}}}", headers=auth,
                tests=error(404), description="A completed finetune's model is ft:<finetune id> (its fine_tuned_model)."),
        request("Delete a base model", "DELETE", f"{models}/{{{{base_model_id}}}}", headers=auth, tests=error(403)),
        request("Delete an unknown model", "DELETE", f"{models}/ft:does-not-exist", headers=auth, tests=error(404)),
    ]


# --------------------------------------------------------------------------- trainer services


def service_items(backend: str) -> list[dict[str, Any]]:
    base = f"{{{{{backend}_url}}}}"
    return [
        request(f"{backend}: health", "GET", f"{base}/health",  # 'starting' while a backend warms up (Unsloth's probe)
                tests=js(check("200 healthy or starting",
                               "pm.response.to.have.status(200); pm.expect(['healthy', 'starting']).to.include(pm.response.json().status)"))),
        request(f"{backend}: info", "GET", f"{base}/info",
                tests=js("const info = pm.response.json();",
                         check("200", "pm.response.to.have.status(200)"),
                         check("backend", f"pm.expect(info.backend).to.eql('{backend}')"),
                         check("fields", "pm.expect(info).to.include.keys('methods', 'training_types', 'available', 'runner', 'version')"))),
    ]


def job_items() -> list[dict[str, Any]]:
    base = "{{huggingface_url}}"
    train = {
        "job_id": "{{job_id}}",
        "base_model": {"model_name": "{{model}}"},
        "customization": {"method": "lora", "rank": 8, "lora_alpha": 16, "precision": "fp32"},
        "resources": {"gpus": 0, "cpus": 1, "memory_gb": 4, "max_duration_minutes": 30},
        "datasets": [{"source": "{{dataset_uri}}"}],
        "tuning_parameters": {"max_steps": 100000, "batch_size": 4, "max_sequence_length": 128},
        "labels": {"source": "postman"},
    }
    bad = json.loads(json.dumps(train))
    bad["tuning_parameters"]["learning_rate"] = 5
    job = f"{base}/jobs/{{{{job_id}}}}"
    return [
        request("Train: invalid request", "POST", f"{base}/train", body=bad, tests=error(422),
                prerequest=js("pm.collectionVariables.set('job_id', 'pm-' + Date.now().toString(36));")),
        request("Train", "POST", f"{base}/train", body=train, tests=js(
            "const job = pm.response.json();",
            check("202", "pm.response.to.have.status(202)"),
            check("pending, our id", "pm.expect(job.status).to.eql('pending'); pm.expect(job.id).to.eql(pm.collectionVariables.get('job_id'))"),
            check("fields", "pm.expect(job).to.include.keys('output_uri', 'log_uri', 'progress', 'metrics', 'runner')"),
        )),
        request("Train: same job_id again", "POST", f"{base}/train", body=train, tests=error(409, "conflict")),
        request("List jobs", "GET", f"{base}/jobs?limit=100", tests=js(
            "const body = pm.response.json();",
            check("200", "pm.response.to.have.status(200)"),
            check("listed", "pm.expect(body.data.map(j => j.id)).to.include(pm.collectionVariables.get('job_id'))"),
            check("count", "pm.expect(body.count).to.be.at.least(1)"),
        )),
        request("Get job", "GET", job, tests=js(
            "const job = pm.response.json();",
            check("200", "pm.response.to.have.status(200)"),
            check("backend", "pm.expect(job.backend).to.eql('huggingface')"),
            check("labels", "pm.expect(job.labels).to.eql({source: 'postman'})"),
        )),
        request("Job events", "GET", f"{job}/events?after=0", tests=js(
            "const body = pm.response.json();",
            check("200", "pm.response.to.have.status(200)"),
            check("accepted first", "pm.expect(body.data[0].data.status).to.eql('pending')"),
        )),
        request("Job logs", "GET", f"{job}/logs?tail=10", tests=js(
            "const body = pm.response.json();",
            check("200", "pm.response.to.have.status(200)"),
            check("fields", "pm.expect(body).to.have.all.keys('job_id', 'logs', 'count')"),
        )),
        request("List jobs without the service token", "GET", f"{base}/jobs", auth=NO_AUTH, tests=error(401),
                description="Every route but /health takes TRAINYARD_SERVICE_TOKEN."),
        request("Cancel job without the service token", "POST", f"{job}/cancel", auth=NO_AUTH, tests=error(401)),
        request("Cancel job", "POST", f"{job}/cancel", tests=js(
            check("200 cancelled", "pm.response.to.have.status(200); pm.expect(pm.response.json().status).to.eql('cancelled')"),
        )),
        request("Cancel job again", "POST", f"{job}/cancel", tests=error(409, "conflict")),
        request("Get unknown job", "GET", f"{base}/jobs/does-not-exist", tests=error(404)),
    ]


# --------------------------------------------------------------------------- the collection


def build() -> tuple[dict[str, Any], dict[str, Any]]:
    user = {"x-portkey-api-key": "{{api_key}}"}
    internal = {"Authorization": "Bearer {{internal_token}}", "x-workspace-id": "{{workspace}}"}
    items = [
        folder("Gateway: meta", "Health (no auth) and the trainer services the gateway reaches.", [
            request("Health", "GET", "{{gateway_url}}/health",
                    tests=js(check("200 healthy", "pm.response.to.have.status(200); pm.expect(pm.response.json().status).to.eql('healthy')"))),
            request("Trainer services", "GET", "{{gateway_url}}/v1/services", headers=user,
                    tests=ok(check("huggingface reachable",
                                   "pm.expect(data.find(s => s.name === 'huggingface').reachable).to.eql(true)"))),
        ]),
        folder("Gateway: inference", "OpenAI-compatible chat/completions, the playground and export (docs/inference.md). "
               "These requests check the answers that need no model loaded: an unknown model and a bad parameter.", [
            request("Chat: unknown model is 404", "POST", "{{gateway_url}}/v1/chat/completions", headers=user,
                    body={"model": "ft:no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                    tests=js(check("404 in OpenAI's shape", "pm.response.to.have.status(404); "
                                   "pm.expect(pm.response.json().error.type).to.eql('not_found_error')"))),
            request("Completions: n=2 is 422", "POST", "{{gateway_url}}/v1/completions", headers=user,
                    body={"model": "ft:no-such-model", "prompt": "hi", "n": 2},
                    tests=js(check("422 naming the parameter", "pm.response.to.have.status(422); "
                                   "pm.expect(pm.response.json().error.param).to.eql('n')"))),
            request("Playground: unknown model is 404", "POST", "{{gateway_url}}/v1/playground/generate", headers=user,
                    body={"model_id": "ft:no-such-model", "prompt": "hi", "max_new_tokens": 8}, tests=error(404)),
            request("Export: unknown model is 404", "POST", "{{gateway_url}}/v1/models/ft:no-such-model/export",
                    headers=user, tests=error(404)),
        ]),
        folder("Gateway: datasets and finetunes", "The contract flow with an API key: dataset, upload, attach, "
               "finetune, validation, start, progress, cancel.",
               gateway_flow("public", "{{gateway_url}}", "/v1", user, "")),
        folder("Gateway: models", "OpenAI's models API over the registry: the catalog's base models and the "
               "workspace's fine-tuned models (ft:<finetune id>); any OpenAI client works with base_url "
               "{{gateway_url}}/v1.", model_items("{{gateway_url}}", user)),
        folder("Dataservice (internal)", "The same operations for the control plane: TRAINYARD_INTERNAL_TOKEN as a "
               "bearer token, the workspace in x-workspace-id. Cluster-internal in a deployment.", [
            request("Internal call without the token", "GET", "{{dataservice_url}}/v1/dataservice/datasets",
                    tests=error(401)),
            request("Internal health", "GET", "{{dataservice_url}}/health",
                    tests=js(check("200", "pm.response.to.have.status(200)"))),
            request("Trainer services (internal app)", "GET", "{{dataservice_url}}/v1/services", headers=user,
                    tests=ok(check("three services", "pm.expect(data.map(s => s.name)).to.have.members(['huggingface', 'unsloth', 'dpo'])")),
                    description="Takes a user API key, like on the public gateway."),
            *gateway_flow("internal", "{{dataservice_url}}", "/v1/dataservice", internal, "ds_"),
        ]),
        folder("Trainer service: huggingface", "A trainer service's own API (the gateway calls it with "
               "TRAINYARD_SERVICE_TOKEN as a bearer token; so can an operator who holds it). Every service has the "
               "same routes.", [*service_items("huggingface"), *job_items()], auth=SERVICE_AUTH),
        folder("Trainer service: unsloth", "Health and capabilities.", service_items("unsloth"), auth=SERVICE_AUTH),
        folder("Trainer service: dpo", "Health and capabilities.", service_items("dpo"), auth=SERVICE_AUTH),
        folder("Cleanup", "Delete the datasets the run created (their finetunes were cancelled).", [
            request("Delete dataset", "DELETE", "{{gateway_url}}/v1/datasets/{{dataset_id}}", headers=user, tests=ok()),
            request("Delete dataset (internal)", "DELETE", "{{dataservice_url}}/v1/dataservice/datasets/{{ds_dataset_id}}",
                    headers=internal, tests=ok()),
        ]),
    ]
    collection = {
        "info": {
            "_postman_id": "6f1d2c1e-5a2b-4c8e-9d3f-7a1b2c3d4e5f",
            "name": "Trainyard APIs",
            "description": "Every endpoint of the Trainyard gateway (public and /v1/dataservice) and of the trainer "
            "services, with tests on status codes and fields. Run the folders in order (later ones reuse ids saved by "
            "earlier ones). Variables default to the local stack (`make up`); import "
            "trainer-apis.local.postman_environment.json or override them for a cluster. Generated by "
            "postman/build_collection.py.",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "item": items,
        "variable": [{"key": k, "value": v, "type": "string", "description": d} for k, (v, d) in VARIABLES.items()],
    }
    environment = {
        "id": "0b7e4f4a-2c1d-4e8f-a6b5-3c2d1e0f9a8b",
        "name": "Trainyard local",
        "values": [{"key": k, "value": v, "type": "secret" if k in ("api_key", "internal_token") else "default",
                    "enabled": True} for k, (v, _) in VARIABLES.items() if k != "dataset_jsonl"],
        "_postman_variable_scope": "environment",
    }
    return collection, environment


def render() -> dict[Path, str]:
    collection, environment = build()
    return {COLLECTION: json.dumps(collection, indent=2) + "\n", ENVIRONMENT: json.dumps(environment, indent=2) + "\n"}


if __name__ == "__main__":
    for path, text in render().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
