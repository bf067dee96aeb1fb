"""Secret columns at rest: Fernet (AES-128-CBC + HMAC-SHA256) under keys from settings.

Rows keep their JSON columns; a secret column holds ``{"fernet": "<token>"}``, never the values.
``TRAINYARD_SECRET_KEYS`` is a list: the first key encrypts, every key decrypts, so a key rotates by
putting a new one first, running ``trainyard secrets rotate`` (re-encrypts every row with it) and
then dropping the old one. Without keys a process refuses to start, except in dev mode, where a
key file under var/run is generated once (mode 0600) and shared by the local processes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Engine, Table, select, update

from common.errors import ServiceUnavailable
from common.settings import VAR, Settings

log = logging.getLogger("trainyard.secretbox")

KEYS_ENV = "TRAINYARD_SECRET_KEYS"
DEV_KEY_FILE = Path(VAR, "run", "secret-key")  # under settings.home
FIELD = "fernet"


class SecretsUnreadable(ServiceUnavailable):
    """A stored secret that none of the configured keys opens (a key was dropped too early): the
    deployment's keys need fixing, the request was fine."""

    error = "secrets_unreadable"


class SecretBox:
    """Seals and opens the JSON of a secret column."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secrets: dict[str, Any] | None) -> dict[str, Any]:
        """The stored form of ``secrets``: ``{}`` when there are none, else one ciphertext."""
        if not secrets:
            return {}
        return {FIELD: self._fernet.encrypt(json.dumps(secrets).encode()).decode()}

    def open(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """The secrets of a stored column. Raises: SecretsUnreadable (no configured key opens it)."""
        if not stored:
            return {}
        token = stored.get(FIELD)
        if not isinstance(token, str):  # written before encryption was on: still readable, sealed on rotate
            return dict(stored)
        try:
            return dict(json.loads(self._fernet.decrypt(token.encode())))
        except InvalidToken:
            raise SecretsUnreadable(f"no key in {KEYS_ENV} decrypts a stored secret") from None

    def reseal(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """``stored`` encrypted under the first key (rotation)."""
        return self.seal(self.open(stored))


def reseal_table(engine: Engine, table: Table, box: SecretBox) -> int:
    """Re-encrypt a table's ``secrets`` column under the box's first key (rotation); returns the rows
    rewritten. Raises: SecretsUnreadable (a row no configured key opens; nothing is written)."""
    with engine.begin() as conn:
        rows = conn.execute(select(table.c.id, table.c.secrets)).all()
        resealed = [(row_id, box.reseal(stored)) for row_id, stored in rows if stored]
        for row_id, sealed in resealed:
            conn.execute(update(table).where(table.c.id == row_id).values(secrets=sealed))
    return len(resealed)


def _dev_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key() + b"\n")
    return path.read_bytes().strip()


def from_settings(settings: Settings) -> SecretBox:
    """The box of this process's keys. Raises: RuntimeError (no keys outside dev mode, or a key that
    is not a Fernet key; the message names its position, never the value)."""
    keys = [k.get_secret_value().strip().encode() for k in settings.secret_keys if k.get_secret_value().strip()]
    if not keys:
        if not settings.dev_mode:
            raise RuntimeError(
                f"{KEYS_ENV} is not set: secrets would be stored in clear. Set it to a JSON list of Fernet keys "
                "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'), "
                "or set TRAINYARD_DEV_MODE=1 for a generated key file"
            )
        key_file = settings.home / DEV_KEY_FILE
        log.warning("%s is not set: dev mode encrypts secrets with the key in %s", KEYS_ENV, key_file)
        keys = [_dev_key(key_file)]
    for i, key in enumerate(keys):
        try:
            Fernet(key)
        except ValueError:
            raise RuntimeError(f"{KEYS_ENV}[{i}] is not a Fernet key (32 url-safe base64-encoded bytes)") from None
    return SecretBox(keys)
