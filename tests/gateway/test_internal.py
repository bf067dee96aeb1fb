"""The control plane's /v1/dataservice/*: its own credential, any workspace it names, and the
internal-only app for a separate port."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ServiceUnavailable
from common.settings import Settings
from gateway.auth import authenticate_internal
from tests.gateway.conftest import GATEWAY, INTERNAL_GATEWAY, INTERNAL_TOKEN, Tenant
from tests.gateway.helpers import SFT_TRAIN, client, err, ok, upload_dataset
from tests.utils.server import Server

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_internal_api_acts_on_the_workspace_it_names(tenant: Tenant) -> None:
    internal = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}
    gateway, ws = tenant.shared.server, tenant.workspace
    with client(gateway, None, **internal, **{"x-workspace-id": ws}) as cp, tenant.client() as user:
        ds = upload_dataset(cp, SFT_TRAIN, prefix="/v1/dataservice")  # the same operations as /v1/datasets ...
        assert ds["workspace_id"] == ws
        created = ok(cp.post("/v1/dataservice/finetune", json={
            "name": "cp", "provider": "huggingface", "model": "some/model", "training_dataset_id": ds["id"]}))
        ft = ok(cp.get(f"/v1/dataservice/finetune/{created['id']}"))
        assert ft["workspace_id"] == ws and ft["training_dataset_id"] == ds["id"]
        assert [d["id"] for d in ok(cp.get("/v1/dataservice/datasets"))] == [ds["id"]]
        # ... on the workspace's own data, which its users see
        assert ok(user.get(f"/v1/finetune/{created['id']}"))["name"] == "cp"
        with client(gateway) as admin:  # the admin key's workspace is another one
            err(admin.get(f"/v1/finetune/{created['id']}"), 404)
        with client(gateway, None, **internal, **{"x-workspace-id": f"{ws}-b"}) as other:
            err(other.get(f"/v1/dataservice/finetune/{created['id']}"), 404)

        # the internal credential is not a user key, and a user key is not the internal credential
        err(cp.get("/v1/datasets"), 401)
        with client(gateway, None, Authorization=f"Bearer {tenant.key}", **{"x-workspace-id": ws}) as as_user:
            err(as_user.get("/v1/dataservice/datasets"), 401)
        with client(gateway, None, **{"x-workspace-id": ws}) as anon:
            err(anon.get("/v1/dataservice/datasets"), 401)
        with client(gateway, None, **internal) as no_workspace:
            assert "x-workspace-id" in err(no_workspace.get("/v1/dataservice/datasets"), 400)["detail"]
        with client(gateway, None, **internal, **{"x-workspace-id": "../etc"}) as bad:
            err(bad.get("/v1/dataservice/datasets"), 400)


@SQLITE
def test_internal_app_serves_only_the_internal_api(gateway_env: dict[str, str], tmp_path: Path) -> None:
    internal = {"Authorization": f"Bearer {INTERNAL_TOKEN}", "x-workspace-id": "team-a"}
    public_env = {**gateway_env, "TRAINYARD_GATEWAY_SERVE_INTERNAL": "false"}
    with (
        Server(INTERNAL_GATEWAY, gateway_env, log_path=tmp_path / "internal.log") as inner,
        Server(GATEWAY, public_env, log_path=tmp_path / "public.log") as public,
        client(inner, None, **internal) as cp,
        client(public, None, **internal) as cp_public,
        client(inner) as user_on_inner,
    ):
        ds = ok(cp.post("/v1/dataservice/datasets", json={"name": "x.jsonl"}))
        err(cp_public.get(f"/v1/dataservice/datasets/{ds['id']}"), 404)  # not mounted on the public port
        err(user_on_inner.get("/v1/datasets"), 404)  # no public routes on the internal port
        assert cp_public.get("/health").status_code == 200
    # without TRAINYARD_INTERNAL_TOKEN the internal API is off (503), whatever the caller sends
    with pytest.raises(ServiceUnavailable, match="TRAINYARD_INTERNAL_TOKEN"):
        authenticate_internal(Settings(internal_token=None), INTERNAL_TOKEN, "team-a")


@SQLITE
def test_placeholder_secrets_stop_the_gateway(gateway_env: dict[str, str], tmp_path: Path) -> None:
    env = {**gateway_env, "TRAINYARD_INTERNAL_TOKEN": "changeme"}
    with pytest.raises(RuntimeError, match="exited"):
        Server(GATEWAY, env, log_path=tmp_path / "gw.log").start(timeout=30)
    log = (tmp_path / "gw.log").read_text()
    assert "TRAINYARD_INTERNAL_TOKEN is a placeholder" in log and "changeme" not in log
