"""`trainyard` command line: serve a component.

    trainyard serve huggingface --port 8081
"""

from __future__ import annotations

import argparse
import os

APPS = {
    "gateway": "gateway.app:app",
    "huggingface": "services.huggingface.app:app",
    "unsloth": "services.unsloth.app:app",
    "dpo": "services.dpo.app:app",
}
DEFAULT_PORTS = {"gateway": 8080, "huggingface": 8081, "unsloth": 8082, "dpo": 8083}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trainyard")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the gateway or a trainer service")
    serve.add_argument("component", choices=sorted(APPS))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int)
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        import uvicorn

        port = args.port or int(os.environ.get("TRAINYARD_PORT") or DEFAULT_PORTS[args.component])
        os.environ["TRAINYARD_PORT"] = str(port)  # the service derives its public URL from it
        uvicorn.run(APPS[args.component], host=args.host, port=port, log_level="info")


if __name__ == "__main__":
    main()
