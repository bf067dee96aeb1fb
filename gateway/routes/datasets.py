"""/v1/datasets (and, with the internal Auth, /v1/dataservice/datasets): thin routes over gateway.datasets."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from common.errors import BadRequest, PayloadTooLarge, Unprocessable
from common.schemas import (
    DatasetCreate,
    DatasetCreated,
    DatasetPublic,
    DatasetUpdate,
    Envelope,
    ErrorBody,
    ListEnvelope,
)
from gateway import datasets
from gateway.auth import Principal
from gateway.deps import Auth, GatewayDep, Limit, Offset, idempotent

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)}

def _form_fields() -> dict[str, dict[str, Any]]:
    """DatasetCreate's fields as multipart text parts: the same constraints as the JSON route, written once."""
    schema = DatasetCreate.model_json_schema()
    fields = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        for option in prop.pop("anyOf", []):  # an optional field is a part that may be left out
            if option.get("type") != "null":
                prop.update(option)
        ref = prop.pop("$ref", None)
        if ref:
            prop = {**schema["$defs"][ref.rsplit("/", 1)[-1]], **prop}
        fields[name] = {k: v for k, v in prop.items() if k != "title" and v is not None}
    fields["name"]["description"] = "Defaults to the file's name."
    return fields


UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The JSONL file."},
                        **_form_fields(),
                    },
                }
            }
        },
    }
}


def _upload_length(request: Request, gw: GatewayDep) -> int:
    """The multipart body's declared length, refused before anything reads the body."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise BadRequest("send the file with a Content-Length (a multipart/form-data body)")
    limit = gw.settings.max_direct_upload_bytes
    if int(length) > limit + 64 * 1024:
        raise PayloadTooLarge(f"the file is larger than the limit of {limit} bytes")
    return int(length)


def build_router(auth: Auth, tag: str = "datasets") -> APIRouter:
    Reader = Annotated[Principal, Depends(auth.read)]
    Writer = Annotated[Principal, Depends(auth.write)]
    router = APIRouter(prefix="/datasets", tags=[tag], responses=ERRORS)
    Idempotent = idempotent(auth)

    @router.post("", response_model=Envelope[DatasetCreated], dependencies=[Idempotent])
    def create_dataset(body: DatasetCreate, who: Writer, gw: GatewayDep, request: Request) -> Envelope[DatasetCreated]:
        """Create a dataset; PUT its file to `signed_url`, then attach it with PUT /datasets/{id}."""
        return Envelope(data=datasets.create(gw, who, body, str(request.base_url)))

    # the length is checked before the Idempotency-Key dependency reads the body
    @router.post("/upload", response_model=Envelope[DatasetPublic], openapi_extra=UPLOAD_FORM,
                 dependencies=[Depends(_upload_length), Idempotent])
    async def upload_dataset(
        request: Request, who: Writer, gw: GatewayDep, length: Annotated[int, Depends(_upload_length)]
    ) -> Envelope[DatasetPublic]:
        """Create a dataset from a small file in one multipart call (limit: max_direct_upload_bytes)."""
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the form needs a 'file' part")
        fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        fields.setdefault("name", upload.filename or "data.jsonl")
        try:
            body = DatasetCreate.model_validate(fields)
        except ValidationError as e:
            raise Unprocessable([{"loc": list(map(str, x["loc"])), "msg": x["msg"], "type": x["type"]}
                                 for x in e.errors()]) from e
        try:
            result = await run_in_threadpool(
                datasets.upload_direct, gw, who, body, upload.file, length, str(request.base_url)
            )
        finally:
            await form.close()
        return Envelope(data=result)

    @router.get("", response_model=ListEnvelope[DatasetPublic])
    def list_datasets(
        who: Reader, gw: GatewayDep, limit: Limit = 100, offset: Offset = 0
    ) -> ListEnvelope[DatasetPublic]:
        data, count = datasets.list_(gw, who, limit=limit, offset=offset)
        return ListEnvelope(data=data, count=count)

    @router.get("/{dataset_id}", response_model=Envelope[DatasetPublic])
    def get_dataset(dataset_id: str, who: Reader, gw: GatewayDep) -> Envelope[DatasetPublic]:
        return Envelope(data=datasets.get(gw, who, dataset_id))

    @router.put("/{dataset_id}", response_model=Envelope[DatasetPublic])
    def update_dataset(dataset_id: str, body: DatasetUpdate, who: Writer, gw: GatewayDep) -> Envelope[DatasetPublic]:
        """Attach the uploaded object (its key) to the dataset."""
        return Envelope(data=datasets.attach(gw, who, dataset_id, body.s3_path))

    @router.post("/{dataset_id}/signed_url", response_model=Envelope[DatasetCreated])
    def renew_signed_url(dataset_id: str, who: Writer, gw: GatewayDep, request: Request) -> Envelope[DatasetCreated]:
        """A fresh upload URL for the dataset (the first one expired)."""
        return Envelope(data=datasets.new_signed_url(gw, who, dataset_id, str(request.base_url)))

    @router.delete("/{dataset_id}", response_model=Envelope[dict])
    def delete_dataset(dataset_id: str, who: Writer, gw: GatewayDep) -> Envelope[dict]:
        """Delete the dataset and the file uploaded for it; 409 while a finetune uses it."""
        datasets.delete(gw, who, dataset_id)
        return Envelope(data={})

    return router
