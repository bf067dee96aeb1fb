"""What a trainer service refuses when the request arrives, over real HTTP: models outside the
rule, storage URIs outside the store, request URLs that reach private addresses, oversized bodies
and fields, out-of-range query integers, and a first row nested too deeply. Each was accepted (or
a 500) before; each must be a 4xx naming the field, before any job exists."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.modelrefs import REFUSED
from tests.utils.factories import place_samples, training_request
from tests.utils.server import SERVICE_TOKEN, Server, wait_for

APP = "services.huggingface.app:app"
METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://0251.0376.0251.0376/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::1]/",
    "https://169.254.169.254/",
    "http://10.0.0.1/",
    "http://[fd00::1]/",
    "http://0.0.0.0/",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One service whose outbound allow-list admits only 127.0.0.0/8 (the test's webhook receiver);
    the metadata and private ranges stay refused."""
    tmp = tmp_path_factory.mktemp("checks")
    root = tmp / "objects"
    uris = place_samples(root)
    env = {
        "TRAINYARD_DATABASE_URL": f"sqlite:///{tmp / 'trainyard.db'}",
        "TRAINYARD_STORAGE_ROOT": str(root),
        "TRAINYARD_LOG_DIR": str(tmp / "logs"),
        "TRAINYARD_OUTBOUND_ALLOW": json.dumps(["127.0.0.0/8"]),
        "TRAINYARD_MAX_REQUEST_BYTES": str(256 * 1024),
        "HF_HUB_OFFLINE": "1",
    }
    with Server(APP, env, log_path=tmp / "service.log") as srv:
        yield {"server": srv, "root": root, "uris": uris, "tmp": tmp}


def client(stack: dict[str, Any]) -> httpx.Client:
    return stack["server"].client(timeout=30)


def refused(r: httpx.Response, status: int = 422) -> str:
    """The error body's detail as one string, after checking the envelope."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "status_code"} and body["status_code"] == status, body
    return json.dumps(body["detail"])


def test_models_outside_the_rule_are_refused_with_one_message(stack: dict[str, Any]) -> None:
    existing = stack["tmp"] / "a-model"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    refs = ["/etc", "/etc/passwd", "/no/such/dir", str(existing), str(stack["tmp"] / "nothing-here"),
            "~/models", "~root", "file:///etc", "file:///etc/passwd", "../models", "./m", "org/../etc",
            "http://example.com/m", "org/name/extra"]
    details = set()
    with client(stack) as c:
        for ref in refs:
            detail = refused(c.post("/train", json=training_request(ref, stack["uris"]["sft_train"])))
            assert "base_model.model_name" in detail and REFUSED in detail, (ref, detail)
            details.add(detail)
    assert len(details) == 1  # the same text whether the path exists or not


def test_storage_uris_and_schemes_are_checked_on_submit(stack: dict[str, Any]) -> None:
    root: Path = stack["root"]
    with client(stack) as c:
        req = training_request("org/model", stack["uris"]["sft_train"])
        req["artifacts"] = {"output_uri": "file:///elsewhere"}
        assert "artifacts.output_uri" in refused(c.post("/train", json=req))
        req["artifacts"] = {"output_uri": root.as_uri() + "/a/%2e%2e/%2E%2E/x"}
        assert "output_uri" in refused(c.post("/train", json=req))
        req["artifacts"] = {"log_uri": "file:///tmp/logs"}
        assert "artifacts.log_uri" in refused(c.post("/train", json=req))
        req = training_request("org/model", stack["uris"]["sft_train"])
        req["base_model"]["weights_url"] = "http://example.com/weights"
        assert "weights_url" in refused(c.post("/train", json=req))
        req["base_model"]["weights_url"] = "file:///etc"
        assert "base_model.weights_url" in refused(c.post("/train", json=req))
        req = training_request("org/model", "file:///etc/passwd")
        assert "datasets[0].source" in refused(c.post("/train", json=req))
        assert c.get(f"/jobs/{req['job_id']}").status_code == 404


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_webhooks_to_private_addresses_are_refused_in_every_spelling(stack: dict[str, Any], url: str) -> None:
    req = training_request("org/model", stack["uris"]["sft_train"])
    req["callbacks"] = {"webhook_url": url}
    with client(stack) as c:
        assert "callbacks.webhook_url" in refused(c.post("/train", json=req))
        req["callbacks"] = {}
        req["artifacts"] = {"status_stream_url": url}
        assert "artifacts.status_stream_url" in refused(c.post("/train", json=req))


class _Receiver(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body or b"{}")})
        self.send_response(307)  # a redirect the sender must not follow
        self.send_header("Location", "/redirected")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Receiver,), {"seen": seen})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"localhost:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_an_allowed_webhook_is_sent_to_the_checked_address_and_redirects_are_not_followed(
    stack: dict[str, Any], receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    host, seen = receiver
    req = training_request("org/model", stack["uris"]["sft_train"])
    req["callbacks"] = {"webhook_url": f"http://{host}/hook?x=1", "auth_header": "Bearer webhook-secret"}
    with client(stack) as c:
        r = c.post("/train", json=req)  # the caller's credential is the service token
        assert r.status_code == 202, r.text
        c.post(f"/jobs/{req['job_id']}/cancel")
        wait_for(c, f"/jobs/{req['job_id']}", lambda j: j["status"] in ("failed", "cancelled", "completed"))
    deadline = 50
    while deadline and not seen:
        threading.Event().wait(0.1)
        deadline -= 1
    assert seen, "the webhook never arrived"
    assert all(s["path"] == "/hook?x=1" for s in seen)  # /redirected never requested
    first = seen[0]
    assert first["headers"]["Host"] == host  # the name kept while connecting to the checked address
    assert first["headers"]["Authorization"] == "Bearer webhook-secret"  # the webhook's own, never the caller's
    assert SERVICE_TOKEN not in json.dumps(first)
    assert first["body"]["id"] == req["job_id"]


def test_bodies_and_fields_are_capped(stack: dict[str, Any]) -> None:
    with client(stack) as c:
        big = b'{"labels": {"a": "' + b"x" * (1024 * 1024) + b'"}}'
        assert "TRAINYARD_MAX_REQUEST_BYTES" in refused(
            c.post("/train", content=big, headers={"content-type": "application/json"}), 413)

        def chunked() -> Iterator[bytes]:  # no Content-Length: read only up to the cap
            for _ in range(64):
                yield b"x" * 65536

        refused(c.post("/train", content=chunked(), headers={"content-type": "application/json"}), 413)
        req = training_request("org/model", stack["uris"]["sft_train"])
        req["customization"]["target_modules"] = [f"m{i}" for i in range(1000)]
        assert "target_modules" in refused(c.post("/train", json=req))
        req = training_request("org/model", stack["uris"]["sft_train"])
        req["labels"] = {f"k{i}": "v" for i in range(100)}
        assert "labels" in refused(c.post("/train", json=req))
        req["labels"] = {"k": "v" * 10_000}
        assert "labels" in refused(c.post("/train", json=req))
        assert c.get(f"/jobs/{req['job_id']}").status_code == 404


def test_huge_query_integers_are_422_not_500(stack: dict[str, Any]) -> None:
    with client(stack) as c:
        for path in ("/jobs?offset=9223372036854775808", "/jobs?offset=99999999999",
                     "/jobs/x/events?after=9223372036854775808", "/jobs/x/events?after=18446744073709551616"):
            refused(c.get(path))
        assert c.get("/health").status_code == 200  # the connection and the process survived


def test_a_405_lists_the_allowed_methods(stack: dict[str, Any]) -> None:
    with client(stack) as c:
        r = c.options("/jobs")
        refused(r, 405)
        assert r.headers["allow"] == "GET"
        r = c.request("DELETE", "/train")
        refused(r, 405)
        assert r.headers["allow"] == "POST"


def test_a_first_row_nested_too_deeply_is_named_by_line(stack: dict[str, Any]) -> None:
    deep = stack["root"] / "deep.jsonl"
    deep.write_text("\n" + "[" * 5000 + "]" * 5000 + "\n")
    with client(stack) as c:
        detail = refused(c.post("/train", json=training_request("org/model", deep.as_uri())))
    assert "line 2" in detail and "nested too deeply" in detail
