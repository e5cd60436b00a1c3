"""`dittotui`: open the console on the embedded demo site, or on a real site with --site FILE."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dittotui.app import DittoApp
from dittotui.session import DemoSession
from hostctl.client.site import load as load_site
from hostctl.demo.config import DEFAULT_CONFIG
from hostctl.demo.config import load as load_demo
from hostctl.errors import HostctlError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dittotui", description=__doc__)
    p.add_argument("--site", type=Path, help="site inventory (default: start the embedded demo site)")
    p.add_argument("--demo-config", type=Path, default=DEFAULT_CONFIG, help="demo site settings")
    p.add_argument("--readonly", action="store_true", help="allow no change from this console")
    p.add_argument("--refresh", type=float, default=0.25, help="screen refresh interval, seconds (default 0.25)")
    args = p.parse_args(argv)
    demo = None
    try:
        if args.site is not None:
            app = DittoApp(site=load_site(args.site), readonly=args.readonly, refresh=args.refresh)
        else:
            load_demo(args.demo_config)  # fail early, before the screen opens
            demo = DemoSession(args.demo_config)
            app = DittoApp(demo=demo, readonly=args.readonly, refresh=args.refresh)
    except HostctlError as e:
        print(f"dittotui: {e}", file=sys.stderr)
        return 2
    try:
        app.run()
    finally:
        if demo is not None and demo.running:
            asyncio.run(demo.stop())
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
