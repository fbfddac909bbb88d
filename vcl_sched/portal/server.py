"""``vcl-portal --config FILE``: the portal over HTTPS (uvicorn); ``--check`` validates the configuration only."""

from __future__ import annotations

import argparse
import sys

from ..errors import VclError
from . import config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vcl-portal", description="the VCL portal (students, teachers, admins)")
    parser.add_argument("--config", default=config.DEFAULT_PATH,
                        help=f"its configuration (default {config.DEFAULT_PATH})")
    parser.add_argument("--check", action="store_true", help="check the configuration and the database, then exit")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        from .app import create_app

        app = create_app(cfg)
    except VclError as err:
        print(f"vcl-portal: {err}", file=sys.stderr)
        return 1
    if args.check:
        print(f"vcl-portal: {args.config} is good: https on {cfg.listen}:{cfg.port}" if cfg.certfile else
              f"vcl-portal: {args.config} is good: http (no TLS) on {cfg.listen}:{cfg.port}")
        return 0
    import uvicorn

    uvicorn.run(app, host=cfg.listen, port=cfg.port, ssl_certfile=cfg.certfile, ssl_keyfile=cfg.keyfile,
                proxy_headers=False, server_header=False, log_level="info", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
