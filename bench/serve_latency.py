"""The console in a browser: what a visitor waits for and what a tab costs. Writes bench/results/serve_latency.md.

Runs the real `dittotui --serve --allow-changes` on the embedded demo site and headless Chromium (Debian's), then:
- opens the page OPENS times: from navigation to every host shown live on the page (a console process starting,
  its links connecting, its first screen streamed);
- presses `+` and `-` alternately PRESSES times on the CVM under the cursor (the first row): from the page's keydown
  event until that row's worker count changes in the page's terminal (browser -> websocket -> console -> agent ->
  scale -> update -> console -> websocket -> xterm.js), timed in the page itself (`performance.now()`, xterm.js's
  `onWriteParsed`);
- the resident memory of the server and of one tab's console process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import psutil

from hostctl.demo.config import load as load_demo
from hostctl.stats import percentile
from tests.support.chromium import chromium
from tests.support.served import served

OUT = Path(__file__).parent / "results" / "serve_latency.md"
HOSTS = [h.name for h in load_demo().hosts]


def first_row(screen: str) -> str:
    """The CVM under the cursor when the console opens: the CVM table's first row, under its header."""
    lines = screen.splitlines()
    header = next(i for i, line in enumerate(lines) if "CVM" in line and "Workers" in line)
    return lines[header + 1].strip("│ ").split()[0]


# In the page: the time of each keydown, and how long after it the row's worker count changed in the terminal.
WATCH = """(() => {
  window.__changes = [];
  document.addEventListener("keydown", () => { window.__keyAt = performance.now(); }, true);
  const workers = () => {
    const b = window.__xterm.buffer.active;
    for (let y = 0; y < b.length; y++) {
      const line = b.getLine(y).translateToString(true);
      if (line.includes(" ROW ")) { const m = line.match(/(\\d+\\/\\d+)/); return m && m[1]; }
    }
    return null;
  };
  let last = workers();
  window.__xterm.onWriteParsed(() => {
    const now = workers();
    if (now !== last) { last = now; window.__changes.push(performance.now() - window.__keyAt); }
  });
  return last;
})()"""


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def run(opens: int, presses: int) -> str:
    load = os.getloadavg()[0]
    async with served("--allow-changes") as server, chromium() as page:
        opened = []
        for _ in range(opens):
            started = time.perf_counter()
            await page.open(server.url)
            await page.xterm()
            await page.wait_text(*HOSTS, "live", timeout=60)
            opened.append(time.perf_counter() - started)
        await asyncio.sleep(2)  # the demo's background traffic and the first trends settle
        row = first_row(await page.text())
        assert await page.evaluate(WATCH.replace("ROW", row)), f"no {row} row on the page"
        for i in range(presses):
            await page.type("+" if i % 2 == 0 else "-")
            await page.wait_for(f"window.__changes.length > {i}", timeout=10)
            await asyncio.sleep(0.3)
        changed = await page.evaluate("window.__changes")
        assert len(changed) == presses, changed
        consoles = [c for c in psutil.Process(server.pid).children() if "--site" in c.cmdline()]
        assert len(consoles) == 1, consoles
        memory = (rss_mib(server.pid), rss_mib(consoles[0].pid))
    return report(opened, changed, memory, opens=opens, presses=presses, load=(load, os.getloadavg()[0]))


def report(
    opened: list[float],
    changed: list[float],
    memory: tuple[float, float],
    *,
    opens: int,
    presses: int,
    load: tuple[float, float],
) -> str:
    rows = [
        f"| page opened -> every host live on the page, {opens} opens (a new console process each) "
        f"| {percentile(opened, 0.5):.2f} s | {max(opened):.2f} s (max) |",
        f"| `+`/`-` keydown in the page -> the row's worker count changed in its terminal, {presses} presses "
        f"| {percentile(changed, 0.5):.0f} ms | {percentile(changed, 0.99):.0f} ms |",
    ]
    table = "\n".join(rows)
    demo = load_demo()
    hosts, cvms = len(demo.hosts), sum(len(h.cvms) for h in demo.hosts)
    return f"""# The console in a browser (`dittotui --serve`)

One run of `python -m bench.serve_latency --opens {opens} --presses {presses}`: the real `dittotui --serve
--allow-changes` on the embedded demo site ({hosts} hosts, {cvms} CVMs, background traffic), Debian's headless
Chromium on the same 2-core machine; a key's time measured in the page, from its keydown event to the change parsed
into xterm.js's buffer (painted at the next animation frame). The machine was shared: its 1-minute load average
was {load[0]:.1f} at the start and {load[1]:.1f} at the end.

| measure | p50 | p99 |
|---|---:|---:|
{table}

Resident memory: the server (aiohttp, textual-serve) {memory[0]:.0f} MiB; one tab's console process {memory[1]:.0f} MiB
(each tab has its own; at most 8 at once). The demo's emulated driver takes 40 ms to wake a worker and 15 ms to park
one, which the key figure includes.

All presses, sorted (ms): {", ".join(f"{v:.0f}" for v in sorted(changed))}.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--opens", type=int, default=5)
    p.add_argument("--presses", type=int, default=40)
    args = p.parse_args()
    text = asyncio.run(run(args.opens, args.presses))
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
