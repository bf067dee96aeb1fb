"""`trainyard` command line: serve a component, re-encrypt secret columns, and the commands other
packages add (the gateway's `keys`).

    trainyard serve huggingface --port 8081
    trainyard keys create --workspace acme --name ci --scope completions.write
    trainyard keys list [--workspace acme]
    trainyard keys revoke key-0123456789ab
    trainyard secrets rotate          # re-encrypt secret columns under the first TRAINYARD_SECRET_KEYS key

Components come from the ``trainyard.components`` entry points, added commands from
``trainyard.commands`` (a function given the subparsers; it sets ``func`` on its parser) and the
tables `secrets rotate` covers besides the jobs table from ``trainyard.sealed_tables``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from common import components

EXAMPLES = """examples:
  trainyard serve gateway --port 8080
  trainyard serve huggingface --host 0.0.0.0 --port 8081
  trainyard keys create --workspace acme --name ci --scope completions.write
  trainyard keys list --workspace acme
  trainyard secrets rotate

`trainyard COMMAND --help` describes a command and its options."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with the commands other packages add."""
    parser = argparse.ArgumentParser(
        prog="trainyard", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Trainyard, self-hosted LLM fine-tuning: run its processes and manage its keys and secrets. "
        "Every process reads its settings from TRAINYARD_* environment variables (docs/configuration.md).",
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the gateway, a trainer service or the inference service",
        description="Run one component in the foreground (uvicorn). `make up` starts them all in the background.",
    )
    ports = ", ".join(f"{name} {c.port}" for name, c in components.components().items())
    serve.add_argument("component", choices=list(components.components()), help="what to run")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: %(default)s; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=int,
                       help=f"port to listen on (default: TRAINYARD_PORT if set, else the component's own: {ports})")
    serve.set_defaults(func=_serve)
    secrets_cmd = sub.add_parser("secrets", help="secret columns at rest (docs/security.md)",
                                 description="Secret columns at rest, encrypted with TRAINYARD_SECRET_KEYS.")
    secrets_cmd.add_argument("action", choices=["rotate"],
                             help="re-encrypt every stored secret under the first key of TRAINYARD_SECRET_KEYS")
    secrets_cmd.set_defaults(func=_rotate_secrets)
    for add_command in components.load("trainyard.commands"):
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    component = components.components()[args.component]
    port = args.port or int(os.environ.get("TRAINYARD_PORT") or component.port)
    os.environ["TRAINYARD_PORT"] = str(port)  # the service derives its public URL from it
    uvicorn.run(component.app, host=args.host, port=port, log_level="info")


def _rotate_secrets(args: argparse.Namespace) -> None:
    """After putting a new key first: rewrite every row with it, so the old keys can be dropped."""
    from sqlalchemy import Engine, Table

    from common import db, secretbox
    from common.settings import get_settings

    settings = get_settings()
    box = secretbox.from_settings(settings)
    engine = db.make_engine(settings.database_url)
    tables: list[tuple[Callable[[Engine], None], Table]] = [(db.init_db, db.jobs)]
    tables += [sealed() for sealed in components.load("trainyard.sealed_tables")]
    try:
        for init, table in tables:
            init(engine)
            print(f"{table.name}: {secretbox.reseal_table(engine, table, box)} rows re-encrypted", file=sys.stderr)
    except secretbox.SecretsUnreadable as e:
        raise SystemExit(f"error: {e.detail}") from None
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
