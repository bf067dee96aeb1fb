"""ObjectStore behaviour, run the same way over file:// and s3:// (a real moto server)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from common.errors import BadRequest, ObjectNotFound, PayloadTooLarge, StorageError
from common.settings import Settings
from common.storage import MIN_PART_SIZE, ObjectInfo, ObjectStore, parse_uri
from tests.s3 import make_bucket, s3_server  # noqa: F401


@dataclass
class Backend:
    store: ObjectStore
    base: str  # where this test's objects live
    scheme: str


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def s3_store(s3_server) -> Iterator[ObjectStore]:  # noqa: F811
    """One S3 store for the module: a new boto3 client costs ~0.2 s, a bucket ~10 ms."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        store = ObjectStore(Settings(s3_endpoint_url=s3_server.endpoint_url), part_size=MIN_PART_SIZE)
        store.s3.client()  # resolve the dummy credentials while they are set
        yield store


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        settings = Settings(storage_root=tmp_path / "root", storage_url="")
        # Smallest legal part size, so a few MB exercise the multipart path on S3.
        store = ObjectStore(settings, part_size=MIN_PART_SIZE)
        return Backend(store, store.default_uri("t"), "file")
    request.getfixturevalue("aws_env")
    store = request.getfixturevalue("s3_store")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    store.s3.client().create_bucket(Bucket=bucket)  # reuses the store's client; see s3_store
    return Backend(store, f"s3://{bucket}/base/t", "s3")


def _blob(size: int) -> bytes:
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


# ------------------------------------------------------------------ both backends


def test_round_trip_bytes(backend: Backend) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "a", "hello.txt")
    store.put_bytes(uri, b"hello world", content_type="text/plain")

    assert store.get_bytes(uri) == b"hello world"
    with store.open(uri) as fh:
        assert fh.read(5) == b"hello"
        assert fh.read() == b" world"
    info = store.stat(uri)
    assert (info.uri, info.size) == (uri, 11)
    assert info.last_modified is not None
    assert store.exists(uri)

    store.put_bytes(uri, b"v2")  # overwrite replaces
    assert store.get_bytes(uri) == b"v2"


def test_put_stream_multipart_in_chunks(backend: Backend) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "big.bin")
    data = _blob(MIN_PART_SIZE + 700_000)  # ~6 MB: two parts on S3
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))

    assert store.put_stream(uri, chunks) == len(data)
    assert store.stat(uri).size == len(data)
    assert hashlib.sha256(store.get_bytes(uri)).digest() == hashlib.sha256(data).digest()

    small = store.join(backend.base, "small.bin")
    assert store.put_stream(small, io.BytesIO(b"x" * 1000), max_bytes=1000) == 1000
    assert store.get_bytes(small) == b"x" * 1000


def test_put_stream_over_max_bytes_leaves_nothing(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    new = store.join(backend.base, "new.bin")
    with pytest.raises(PayloadTooLarge):
        store.put_stream(new, [b"x" * 600, b"y" * 600], max_bytes=1000)
    assert not store.exists(new)

    # Refused after a multipart part was already sent: the upload must be aborted.
    existing = store.join(backend.base, "existing.bin")
    store.put_bytes(existing, b"original")
    big = (b"z" * 65536 for _ in range(100))  # 6.25 MiB, limit 5.5 MiB
    with pytest.raises(PayloadTooLarge):
        store.put_stream(existing, big, max_bytes=MIN_PART_SIZE + MIN_PART_SIZE // 10)
    assert store.get_bytes(existing) == b"original"
    assert [i.uri for i in store.list(backend.base)] == [existing]

    if backend.scheme == "file":
        assert os.listdir(store.local_path(backend.base)) == ["existing.bin"]  # no temp files
    else:
        _, bucket, _ = parse_uri(backend.base)
        uploads = store.s3.client().list_multipart_uploads(Bucket=bucket)
        assert uploads.get("Uploads", []) == []


def test_upload_dir_list_download_prefix(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    src = tmp_path / "src"
    files = {"config.json": b"{}", "weights/part 1.bin": b"\x00" * 300, "weights/b/c.txt": b"c"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    prefix = store.join(backend.base, "model")
    store.put_bytes(store.join(backend.base, "model-other", "x"), b"not under model/")

    uris = store.upload_dir(src, prefix)
    expected = sorted(store.join(prefix, rel) for rel in files)
    assert sorted(uris) == expected

    listed = store.list(prefix)
    assert [i.uri for i in listed] == expected
    assert {i.uri: i.size for i in listed} == {store.join(prefix, rel): len(data) for rel, data in files.items()}
    assert store.list(prefix + "/") == listed
    assert store.list(store.join(backend.base, "nothing-here")) == []

    dest = tmp_path / "dest"
    paths = store.download_prefix(prefix, dest)
    assert sorted(paths) == sorted(dest / rel for rel in files)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data

    assert store.delete_prefix(prefix) == len(files)
    assert store.list(prefix) == []
    assert store.exists(store.join(backend.base, "model-other", "x"))


def test_exists_stat_delete(backend: Backend) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "d.txt")
    assert not store.exists(uri)
    store.put_bytes(uri, b"abc")
    assert store.stat(uri) == ObjectInfo(uri, 3, store.stat(uri).last_modified)
    store.delete(uri)
    assert not store.exists(uri)
    store.delete(uri)  # idempotent


def test_missing_object(backend: Backend, tmp_path: Path) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "missing.txt")
    for call in (store.get_bytes, store.stat):
        with pytest.raises(ObjectNotFound) as exc:
            call(uri)
        assert uri in str(exc.value.detail)
    with pytest.raises(ObjectNotFound), store.open(uri):
        pass
    target = tmp_path / "out" / "missing.txt"
    with pytest.raises(ObjectNotFound):
        store.download_file(uri, target)
    assert not target.exists()


def test_download_file_round_trip(backend: Backend, tmp_path: Path) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "f.bin")
    local = tmp_path / "in.bin"
    local.write_bytes(b"payload" * 1000)
    store.put_file(uri, local)
    out = tmp_path / "nested" / "out.bin"
    store.download_file(uri, out)
    assert out.read_bytes() == b"payload" * 1000


def test_join_refuses_dotdot(backend: Backend) -> None:
    for bad in ("..", "a/../b", "%2e%2e"):
        with pytest.raises(BadRequest):
            backend.store.join(backend.base, bad)
    assert backend.store.join(backend.base, "/a/", "b") == backend.base + "/a/b"


def test_readers_never_see_a_write_in_flight(backend: Backend) -> None:
    """Mid-upload, the old object is what readers get and a new one does not exist yet; the first
    part has already left memory (a temp file on disk, an uploaded part on S3)."""
    store = backend.store
    existing, new = store.join(backend.base, "existing.bin"), store.join(backend.base, "new.bin")
    store.put_bytes(existing, b"original")
    seen: dict[str, object] = {}

    def chunks(uri: str) -> Iterator[bytes]:
        for i in range(100):  # 6.25 MiB: past one part
            yield b"z" * 65536
            if i == 90:
                seen[uri] = (store.get_bytes(existing), store.exists(new), [i.uri for i in store.list(backend.base)])
                if backend.scheme == "file":
                    seen[uri + ":spilled"] = sum(p.stat().st_size for p in store.local_path(backend.base).iterdir())
                else:
                    _, bucket, _ = parse_uri(backend.base)
                    [upload] = store.s3.client().list_multipart_uploads(Bucket=bucket)["Uploads"]
                    parts = store.s3.client().list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    seen[uri + ":spilled"] = sum(p["Size"] for p in parts.get("Parts", []))

    for uri in (existing, new):
        assert store.put_stream(uri, chunks(uri)) == 100 * 65536
        old_content = b"original" if uri == existing else store.get_bytes(existing)
        assert seen[uri] == (old_content, False, [existing])
        assert isinstance(seen[uri + ":spilled"], int) and seen[uri + ":spilled"] >= MIN_PART_SIZE
    assert store.get_bytes(new) == store.get_bytes(existing) == b"z" * 100 * 65536
    assert [i.uri for i in store.list(backend.base)] == sorted([existing, new])


def test_check_allows_what_a_job_may_use(backend: Backend) -> None:
    store = backend.store
    uri = store.join(backend.base, "data.jsonl")
    assert store.check(uri) == uri  # no I/O: the object need not exist
    for bad in (backend.base + "/a/../b", backend.base + "/%2e%2e/b", backend.base + "/%2E%2E"):
        with pytest.raises(BadRequest, match=r"'\.\.' is not allowed"):
            store.check(bad)
    for bad in ("http://example.com/x", "", "s3://", "file://relative/x"):
        with pytest.raises(BadRequest):
            store.check(bad)


# -------------------------------------------------------------------------- s3 only


def test_presigned_put_then_get(backend: Backend) -> None:
    store, uri = backend.store, backend.store.join(backend.base, "up", "data.jsonl")
    if backend.scheme == "file":
        for presign in (store.presign_get, store.presign_put):
            with pytest.raises(BadRequest, match="presigned URLs need s3:// storage"):
                presign(uri)
        return

    put_url = store.presign_put(uri, expires_seconds=300, content_type="application/jsonl")
    resp = httpx.put(put_url, content=b'{"a": 1}\n', headers={"Content-Type": "application/jsonl"})
    assert resp.status_code == 200, resp.text
    assert store.get_bytes(uri) == b'{"a": 1}\n'

    resp = httpx.get(store.presign_get(uri, expires_seconds=300))
    assert resp.status_code == 200
    assert resp.content == b'{"a": 1}\n'


def test_s3_missing_bucket_and_missing_key(s3_store: ObjectStore, s3_server) -> None:  # noqa: F811
    store = s3_store
    with pytest.raises(ObjectNotFound, match="bucket not found: no-such-bucket-xyz"):
        store.get_bytes("s3://no-such-bucket-xyz/k")
    assert not store.exists("s3://no-such-bucket-xyz/k")

    bucket = make_bucket(s3_server.endpoint_url, f"test-{uuid.uuid4().hex[:12]}")
    with pytest.raises(ObjectNotFound, match=f"object not found: s3://{bucket}/k"):
        store.get_bytes(f"s3://{bucket}/k")


def test_s3_unreachable_endpoint_names_endpoint_not_secrets(monkeypatch: pytest.MonkeyPatch, aws_env: None) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://user:hunter2@127.0.0.1:{port}"
    store = ObjectStore(Settings(s3_endpoint_url=endpoint))
    with pytest.raises(StorageError) as exc:
        store.get_bytes("s3://bucket/key")
    message = str(exc.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "hunter2" not in message and "very-secret-value" not in message
    assert exc.value.__cause__ is not None


def test_s3_download_prefix_refuses_keys_escaping_dest(backend: Backend, tmp_path: Path) -> None:
    if backend.scheme == "file":
        pytest.skip("only S3 keys can contain '..' literally")
    store = backend.store
    _, bucket, key = parse_uri(backend.base)
    store.put_bytes(f"s3://{bucket}/{key}/p/../../../evil.txt", b"x")
    with pytest.raises(BadRequest, match="outside"):
        store.download_prefix(store.join(backend.base, "p"), tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


# ------------------------------------------------------------------------ file only


@pytest.fixture
def file_store(tmp_path: Path) -> ObjectStore:
    (tmp_path / "root").mkdir()
    return ObjectStore(Settings(storage_root=tmp_path / "root"))


def test_file_traversal_refused(file_store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "secret.txt").write_bytes(b"secret")
    escapes = [
        f"file://{root}/../secret.txt",
        f"file://{root}/%2e%2e/secret.txt",
        f"file://{root}/a/%2E%2E/%2e%2e/secret.txt",
        "file:///etc/passwd",
        f"file://{root}/../../../../etc/passwd",
    ]
    for uri in escapes:
        for call in (file_store.local_path, file_store.get_bytes, file_store.exists):
            with pytest.raises(BadRequest, match="escapes the storage root"):
                call(uri)
        with pytest.raises(BadRequest):
            file_store.put_bytes(uri, b"overwrite")
    assert (tmp_path / "secret.txt").read_bytes() == b"secret"

    # '..' that stays inside the root is just a path
    assert file_store.local_path(f"file://{root}/a/../b") == root.resolve() / "b"


def test_file_check_confines_to_the_root(file_store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    for uri in ("file:///etc/passwd", root.as_uri() + "/link/secret.txt", tmp_path.as_uri()):
        with pytest.raises(BadRequest, match="escapes the storage root"):
            file_store.check(uri)
    assert file_store.check(root.as_uri() + "/a b/c.txt") == root.as_uri() + "/a b/c.txt"


def test_file_prefix_is_not_an_object(file_store: ObjectStore) -> None:
    uri = file_store.default_uri("dir", "x.txt")
    file_store.put_bytes(uri, b"x")
    prefix = file_store.default_uri("dir")
    with pytest.raises(BadRequest, match="use delete_prefix"):
        file_store.delete(prefix)
    with pytest.raises(ObjectNotFound):
        file_store.stat(prefix)
    assert file_store.delete_prefix(prefix) == 1
    assert not file_store.local_path(prefix).exists()  # emptied directories go too
    assert file_store.local_path(file_store.default_uri()).is_dir()  # never the root itself


def test_local_path_needs_a_file_uri(file_store: ObjectStore) -> None:
    with pytest.raises(BadRequest, match="is not a file:// URI"):
        file_store.local_path("s3://bucket/key")


def test_file_symlink_escape_refused(file_store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret.txt")

    for uri in (root.as_uri() + "/link/secret.txt", root.as_uri() + "/filelink"):
        with pytest.raises(BadRequest, match="escapes the storage root"):
            file_store.get_bytes(uri)
    with pytest.raises(BadRequest, match="escapes the storage root"):
        file_store.put_bytes(root.as_uri() + "/link/new.txt", b"x")
    assert not (outside / "new.txt").exists()
    assert file_store.list(root.as_uri()) == []  # listing does not follow links out


def test_file_names_with_spaces_round_trip(file_store: ObjectStore) -> None:
    uri = file_store.default_uri("my data", "50% off.txt")
    assert " " not in uri
    file_store.put_bytes(uri, b"ok")
    assert file_store.local_path(uri).name == "50% off.txt"
    assert [i.uri for i in file_store.list(file_store.default_uri("my data"))] == [uri]


def test_file_uri_must_be_absolute(file_store: ObjectStore) -> None:
    with pytest.raises(BadRequest, match="absolute"):
        file_store.get_bytes("file://relative/path.txt")


# ---------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "uri", ["http://example.com/x", "ftp://host/file", "/etc/passwd", "relative/path", "", "s3://"]
)
def test_unsupported_uris(uri: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_uri(uri)
    assert (repr(uri) in str(exc.value)) if uri else "empty" in str(exc.value)


def test_parse_uri() -> None:
    assert parse_uri("s3://bucket/a/b.txt") == ("s3", "bucket", "a/b.txt")
    assert parse_uri("s3://bucket") == ("s3", "bucket", "")
    assert parse_uri("file:///srv/a%20b") == ("file", "", "/srv/a b")
    assert parse_uri("file://localhost/srv/x") == ("file", "", "/srv/x")


def test_default_uri_follows_settings(tmp_path: Path) -> None:
    assert ObjectStore(Settings(storage_root=tmp_path)).default_uri("x", "y") == (tmp_path.as_uri() + "/x/y")
    store = ObjectStore(Settings(storage_url="s3://bkt/prefix/"))
    assert store.default_uri("jobs", "1") == "s3://bkt/prefix/jobs/1"
