"""Rotating TRAINYARD_SECRET_KEYS: rows written under the old key are re-encrypted by `trainyard
secrets rotate` (a real subprocess on a real SQLite file) and then open with the new key alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from common import db, secretbox
from common.settings import Settings
from tests.utils.server import REPO

SECRET = "hf_rotation_probe_0123456789"


def test_rotate_reencrypts_every_row_under_the_first_key(tmp_path: Path) -> None:
    old, new = secretbox.SecretBox.generate_key(), secretbox.SecretBox.generate_key()
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    old_box = secretbox.from_settings(Settings(secret_keys=[old]))
    with db.tx(engine) as conn:
        db.insert_job(conn, {"id": "job-rot", "backend": "huggingface", "request": {},
                             "secrets": old_box.seal({"huggingface_token": SECRET}), "labels": {},
                             "progress": {}, "metrics": {}})
        conn.execute(insert(db.jobs).values(  # written before encryption: plain JSON, still readable
            id="job-plain", backend="huggingface", status="completed", request={}, secrets={"auth_token": SECRET},
            labels={}, progress={}, metrics={}, created_at=db.utcnow(), updated_at=db.utcnow()))

    new_only = secretbox.from_settings(Settings(secret_keys=[new]))
    with db.tx(engine) as conn:
        stored = conn.execute(select(db.jobs.c.secrets).where(db.jobs.c.id == "job-rot")).scalar_one()
    with pytest.raises(secretbox.SecretsUnreadable):
        new_only.open(stored)

    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINYARD_DATABASE_URL": url,
           "TRAINYARD_SECRET_KEYS": json.dumps([new, old])}
    out = subprocess.run([sys.executable, "-m", "common.cli", "secrets", "rotate"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "jobs: 2 rows re-encrypted" in out.stderr
    with db.tx(engine) as conn:
        rows = dict(conn.execute(select(db.jobs.c.id, db.jobs.c.secrets)).all())
    for row_id, stored in rows.items():
        assert SECRET not in json.dumps(stored) and set(stored) == {"fernet"}, row_id
    assert new_only.open(rows["job-rot"]) == {"huggingface_token": SECRET}
    assert new_only.open(rows["job-plain"]) == {"auth_token": SECRET}

    # with a key list that opens nothing, rotate fails clearly and writes nothing
    env["TRAINYARD_SECRET_KEYS"] = json.dumps([secretbox.SecretBox.generate_key()])
    out = subprocess.run([sys.executable, "-m", "common.cli", "secrets", "rotate"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "decrypts a stored secret" in out.stderr and SECRET not in out.stderr
    with db.tx(engine) as conn:
        assert dict(conn.execute(select(db.jobs.c.id, db.jobs.c.secrets)).all()) == rows
    engine.dispose()
