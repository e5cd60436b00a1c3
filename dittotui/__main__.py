"""`dittotui`: open the console on the embedded demo site, on a real site with --site FILE, or on the lab site of
real QEMU guests with --lab; --serve serves it to a browser instead."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dittotui import lab_session
from dittotui.app import DittoApp
from dittotui.session import DemoSession
from hostctl.client.site import load as load_site
from hostctl.demo.config import DEFAULT_CONFIG
from hostctl.demo.config import load as load_demo
from hostctl.errors import HostctlError
from hostctl.lab.runtime import default_runtime

SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # --serve: loopback only, unless --host says otherwise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dittotui", description=__doc__)
    p.add_argument("--site", type=Path, help="site inventory (default: start the embedded demo site)")
    p.add_argument(
        "--lab",
        action="store_true",
        help="the lab site (hostctl lab): attach to the running lab, or start one for this session and stop it on quit",
    )
    p.add_argument(
        "--lab-runtime", type=Path, metavar="DIR", help=f"the lab's runtime directory (default {default_runtime()})"
    )
    p.add_argument("--demo-config", type=Path, default=DEFAULT_CONFIG, help="demo site settings")
    p.add_argument("--readonly", action="store_true", help="allow no change from this console")
    p.add_argument("--refresh", type=float, default=0.25, help="screen refresh interval, seconds (default 0.25)")
    web = p.add_argument_group("browser", "the console in a browser: one per tab, read-only unless allowed")
    web.add_argument("--serve", action="store_true", help="serve the console over HTTP instead of opening it here")
    web.add_argument("--port", help=f"TCP port to serve on (default {SERVE_PORT}; 0: any free port)")
    web.add_argument("--host", help=f"the address to serve on (default {SERVE_HOST}, loopback only)")
    web.add_argument("--allow-changes", action="store_true", help="let visitors scale, run wrk and switch policies")
    args = p.parse_args(argv)
    if not 0.01 <= args.refresh <= 10:
        return _refuse(f"--refresh {args.refresh}: must be from 0.01 to 10 seconds")
    if args.lab and args.site is not None:
        return _refuse("--lab and --site cannot go together: the lab site has its own site file")
    if args.lab_runtime is not None and not args.lab:
        return _refuse("--lab-runtime goes with --lab")
    if args.serve:
        return _serve(args)
    if given := [flag for flag in ("port", "host", "allow_changes") if getattr(args, flag) not in (None, False)]:
        return _refuse(f"--{given[0].replace('_', '-')} goes with --serve")
    if args.lab:
        return _lab(args.lab_runtime or default_runtime(), readonly=args.readonly, refresh=args.refresh)
    demo = None
    try:
        if args.site is not None:
            app = DittoApp(site=load_site(args.site), readonly=args.readonly, refresh=args.refresh)
        else:
            load_demo(args.demo_config)  # fail early, before the screen opens
            demo = DemoSession(args.demo_config)
            app = DittoApp(demo=demo, readonly=args.readonly, refresh=args.refresh)
    except HostctlError as e:
        return _refuse(str(e))
    try:
        app.run()
    finally:
        if demo is not None and demo.running:
            asyncio.run(demo.stop())
    return app.return_code or 0


def _serve(args: argparse.Namespace) -> int:
    """`--serve`: the console in a browser, on loopback, read-only unless --allow-changes (`dittotui.serve`)."""
    if args.lab:
        return _refuse(
            "--serve and --lab cannot go together: serve the site file that `hostctl lab up` writes (--site)"
        )
    if args.readonly and args.allow_changes:
        return _refuse("--readonly and --allow-changes cannot go together")
    from dittotui import serve  # textual-serve and its web stack: only loaded when serving

    try:
        options = serve.ServeOptions(
            host=serve.parse_host(args.host or SERVE_HOST),
            port=SERVE_PORT if args.port is None else serve.parse_port(args.port),
            allow_changes=args.allow_changes,
            refresh=args.refresh,
            site=args.site,
            demo_config=args.demo_config,
        )
        if args.site is None:
            load_demo(args.demo_config)  # fail early, before anything starts
        return serve.serve(options)
    except HostctlError as e:
        return _refuse(str(e))


def _lab(runtime: Path, *, readonly: bool, refresh: float) -> int:
    """The console on the lab in `runtime`: attached if one runs, else started now and taken down on quit."""
    try:
        found = lab_session.running(runtime)
        if found is not None:
            session = lab_session.attach(found)
            _say(f"attaching to the lab running in {found.runtime} (left running on quit)")
        else:
            session = asyncio.run(lab_session.start(runtime, _say))
    except lab_session.Interrupted as e:
        print(f"dittotui: interrupted; lab down: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the boot began, or while the lab was being taken down
        print("dittotui: interrupted; see hostctl lab status", file=sys.stderr)
        return 130
    except HostctlError as e:
        return _refuse(str(e))
    except Exception as e:  # say why in one line, never a traceback
        return _refuse(f"the lab did not start: {type(e).__name__}: {e}")
    app = DittoApp(site=session.site, readonly=readonly, refresh=refresh, site_label=session.label)
    try:
        app.run()
    finally:
        left = _leave(session)
    return left or app.return_code or 0


def _leave(session: lab_session.LabSession) -> int:
    """Take the lab down if this session started it, else say it is left running: 0, or 2 if down failed."""
    runtime = session.lab.runtime
    if not session.started:
        _say(f"the lab in {runtime} is left running (hostctl lab down takes it down)")
        return 0
    _say(f"taking down the lab this session started ({runtime})")
    try:
        lines = asyncio.run(lab_session.stop(runtime))
    except HostctlError as e:
        return _refuse(f"lab down: {e}; run hostctl lab down --runtime {runtime}")
    for line in lines:
        _say(f"  {line}")
    return 0


def _say(line: str) -> None:
    print(f"dittotui: {line}" if not line.startswith(" ") else line, flush=True)


def _refuse(line: str) -> int:
    print(f"dittotui: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
