"""The gateway's `trainyard keys` commands (create, list, revoke API keys in TRAINYARD_DATABASE_URL),
added to the `trainyard` command line through the ``trainyard.commands`` entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common.schemas import Scope


def add_keys_command(sub: argparse._SubParsersAction[Any]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke gateway API keys (in TRAINYARD_DATABASE_URL)",
                          description="Gateway API keys, in the database of TRAINYARD_DATABASE_URL. A key is sent as "
                          "x-portkey-api-key: <key> or Authorization: Bearer <key>.")
    keys.set_defaults(func=run_keys)
    ksub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    create = ksub.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    create.add_argument("--workspace", required=True, help="workspace the key acts in")
    create.add_argument("--name", required=True, help="a label for the key (who or what uses it)")
    create.add_argument(
        "--scope", action="append", dest="scopes", choices=[s.value for s in Scope],
        help="repeatable; default: completions.write (which includes reading)",
    )
    lst = ksub.add_parser("list", help="list keys (never the keys themselves)")
    lst.add_argument("--workspace", help="only this workspace's keys (default: every workspace)")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = ksub.add_parser("revoke", help="revoke a key by id; it stops working at once")
    revoke.add_argument("key_id", help="the key's id (key-..., from `keys list`)")


def run_keys(args: argparse.Namespace) -> None:
    from common.db import make_engine
    from common.errors import TrainyardError
    from common.settings import get_settings
    from gateway import auth
    from gateway import db as gateway_db

    engine = make_engine(get_settings().database_url)
    gateway_db.init_db(engine)
    try:
        if args.keys_cmd == "create":
            scopes = [Scope(s) for s in (args.scopes or [Scope.write.value])]
            key, secret = auth.create_key(engine, name=args.name, workspace_id=args.workspace, scopes=scopes)
            print(f"created {key.id} (workspace {key.workspace_id}, scopes {', '.join(key.scopes)})", file=sys.stderr)
            print("the key is shown this once; store it now:", file=sys.stderr)
            print(secret)
        elif args.keys_cmd == "list":
            for key in auth.list_keys(engine, args.workspace):
                if args.json:
                    print(key.model_dump_json())
                else:
                    state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                    print(f"{key.id}  {key.prefix}...  {key.workspace_id:<16} {','.join(key.scopes):<36} {state}  {key.name}")
        elif args.keys_cmd == "revoke":
            auth.revoke_key(engine, args.key_id)
            print(f"revoked {args.key_id}", file=sys.stderr)
    except TrainyardError as e:
        raise SystemExit(f"error: {e.detail}") from None
    finally:
        engine.dispose()
