"""`make screenshots`: the console in a browser, as `screenshots/browser.png`.

Runs the real `dittotui --serve` (which starts the embedded demo site, read-only), opens its page in headless
Chromium, waits until every host is live and the services show some history, presses `+` (refused, with one line
in the log and a notice) and takes the page's screenshot. The server, its demo site and Chromium are stopped at the
end, and on any error. Run from the repository's root: `python -m scripts.browser_screenshot`.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tests.support.chromium import chromium
from tests.support.served import served

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("mec-1", "mec-2", "regional-1")  # the embedded demo site's hosts
HISTORY_SECONDS = 8.0  # the p99 trends fill in meanwhile


async def take(out: Path) -> None:
    async with served() as server, chromium(width=1400, height=900) as page:
        print(f"browser screenshot: {server.url} serves the console; opening it in headless Chromium", flush=True)
        await page.open(server.url)
        await page.xterm()
        await page.wait_text(*HOSTS, "live", timeout=45)
        await asyncio.sleep(HISTORY_SECONDS)
        await page.type("+")
        await page.wait_text("read-only console: wake one worker refused")
        await asyncio.sleep(0.5)  # the notice slides in
        await page.screenshot(out)
    print(f"browser screenshot: wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "screenshots" / "browser.png")
    asyncio.run(take(p.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
