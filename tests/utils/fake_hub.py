"""A stand-in for the Hugging Face Hub's model API (``GET /api/models/{id}``), which cannot be reached
here: it knows the ids in ``FAKE_HUB_MODELS`` (comma-separated) and answers any other id the way the
hub does (an error status with ``X-Error-Code: RepoNotFound``). Run with tests.utils.server.Server;
point huggingface_hub at it with ``HF_ENDPOINT``."""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
KNOWN = {m for m in os.environ.get("FAKE_HUB_MODELS", "").split(",") if m}


@app.get("/api/models/{model_id:path}")
def model_info(model_id: str) -> JSONResponse:
    if model_id in KNOWN:
        return JSONResponse({"id": model_id, "modelId": model_id, "sha": "0" * 40, "private": False, "tags": []})
    return JSONResponse({"error": "Repository not found"}, status_code=401,
                        headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
