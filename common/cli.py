"""`trainyard` command line: serve a component, manage gateway API keys.

    trainyard serve huggingface --port 8081
    trainyard keys create --workspace acme --name ci --scope completions.write
    trainyard keys list [--workspace acme]
    trainyard keys revoke key-0123456789ab
    trainyard secrets rotate          # re-encrypt secret columns under the first TRAINYARD_SECRET_KEYS key
"""

from __future__ import annotations

import argparse
import os

APPS = {
    "gateway": "gateway.app:app",
    "gateway-internal": "gateway.app:internal_app",
    "huggingface": "services.huggingface.app:app",
    "unsloth": "services.unsloth.app:app",
    "dpo": "services.dpo.app:app",
    "inference": "services.inference.app:app",
}
DEFAULT_PORTS = {"gateway": 8080, "gateway-internal": 8090, "huggingface": 8081, "unsloth": 8082, "dpo": 8083, "inference": 8084}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trainyard")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the gateway or a trainer service")
    serve.add_argument("component", choices=sorted(APPS))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int)
    _add_key_commands(sub)
    secrets_cmd = sub.add_parser("secrets", help="secret columns at rest (docs/security.md)")
    secrets_cmd.add_argument("action", choices=["rotate"],
                             help="re-encrypt every stored secret under the first key of TRAINYARD_SECRET_KEYS")
    args = parser.parse_args(argv)

    if args.cmd == "keys":
        _keys(args)
    elif args.cmd == "secrets":
        _rotate_secrets()
    elif args.cmd == "serve":
        import uvicorn

        port = args.port or int(os.environ.get("TRAINYARD_PORT") or DEFAULT_PORTS[args.component])
        os.environ["TRAINYARD_PORT"] = str(port)  # the service derives its public URL from it
        uvicorn.run(APPS[args.component], host=args.host, port=port, log_level="info")


def _add_key_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke gateway API keys (in TRAINYARD_DATABASE_URL)")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    create.add_argument("--workspace", required=True, help="workspace the key acts in")
    create.add_argument("--name", required=True, help="a label for the key (who or what uses it)")
    create.add_argument(
        "--scope", action="append", dest="scopes", choices=["completions.read", "completions.write"],
        help="repeatable; default: completions.write (which includes reading)",
    )
    lst = ksub.add_parser("list", help="list keys (never the keys themselves)")
    lst.add_argument("--workspace")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = ksub.add_parser("revoke", help="revoke a key by id; it stops working at once")
    revoke.add_argument("key_id")


def _rotate_secrets() -> None:
    """After putting a new key first: rewrite every row with it, so the old keys can be dropped."""
    import sys

    from common import db, secretbox
    from common.settings import get_settings
    from gateway import db as gateway_db

    settings = get_settings()
    box = secretbox.from_settings(settings)
    engine = db.make_engine(settings.database_url)
    try:
        for init, table in ((db.init_db, db.jobs), (gateway_db.init_db, gateway_db.finetunes)):
            init(engine)
            print(f"{table.name}: {secretbox.reseal_table(engine, table, box)} rows re-encrypted", file=sys.stderr)
    except secretbox.SecretsUnreadable as e:
        raise SystemExit(f"error: {e.detail}") from None
    finally:
        engine.dispose()


def _keys(args: argparse.Namespace) -> None:
    import sys

    from common.db import make_engine
    from common.errors import TrainyardError
    from common.schemas import Scope
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


if __name__ == "__main__":
    main()
