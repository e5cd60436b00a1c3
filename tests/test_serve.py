"""`dittotui --serve`: the real command serving the console on a demo site, opened in headless Chromium; its bad
input; pages of other sites refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dittotui.__main__ import main
from hostctl.client.site import load as load_site
from hostctl.errors import HostctlError
from tests.support.chromium import CHROMIUM, Page, chromium
from tests.support.served import Served, served

# Two small hosts, no background traffic: the dashboard is up within seconds.
DEMO = """
sample_interval = 0.5
probe_rate = 1.0
[traffic]
base_rps = 0.0
peak_rps = 0.0
[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
{hosts}
"""
HOST = """
[[hosts]]
name = "{name}"
  [[hosts.cvms]]
  name = "{name}-snp"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 5
  online_vcpus = 2
"""
HOSTS = ("mec-north", "mec-south")
browser = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not found: apt-get install chromium")


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Served, Page]]:
    """`dittotui --serve` starting its own demo site, and a headless Chromium (both started at once)."""
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as started:
            config = tmp_path_factory.mktemp("serve") / "demo.toml"
            config.write_text(DEMO.format(hosts="".join(HOST.format(name=name) for name in HOSTS)))
            server = started.create_task(stack.enter_async_context(served("--demo-config", str(config))))
            page = started.create_task(stack.enter_async_context(chromium()))
        yield server.result(), page.result()


async def open_console(page: Page, url: str) -> str:
    """Open the served page and wait until the dashboard shows every host live; the terminal's text."""
    await page.open(url)
    await page.xterm()
    return await page.wait_text(*HOSTS, "live", f"{HOSTS[0]}-snp")


@browser
async def test_the_console_in_a_browser_shows_the_hosts_and_refuses_changes(site: tuple[Served, Page]) -> None:
    server, page = site
    assert server.url.startswith("http://127.0.0.1:")
    assert "(read-only;" in "".join(server.out)
    screen = await open_console(page, server.url)
    assert "read-only" in screen.splitlines()[0]  # the header says so
    before = server.audit()
    for key, what in (("+", "wake one worker"), ("w", "wrk load"), ("a", "elastic policy change")):
        await page.type(key)
        await page.wait_text(f"read-only console: {what} refused")
    await asyncio.sleep(0.5)  # a request sent anyway would be audited by now (refused or not)
    assert server.audit() == before
    # A page of another site may not open a console (its websocket is refused), however it names the server.
    ws_url = server.url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as http:
        for origin in ("http://evil.example", "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with asyncio.timeout(5):
                    await http.ws_connect(ws_url, headers={"Origin": origin})
            assert refused.value.status == 403


@browser
async def test_allow_changes_warns_naming_the_address_and_a_visitor_scales(
    site: tuple[Served, Page],
) -> None:
    demo, page = site
    assert demo.runtime is not None and demo.hosts == list(HOSTS)
    async with served("--allow-changes", "--site", str(demo.runtime / "site.toml")) as server:
        text = "".join(server.out)
        assert f"warning: --allow-changes: whoever reaches {server.url} can scale CVMs" in text
        screen = await open_console(page, server.url)
        assert "read-only" not in screen
        before = len(demo.audit())
        await page.type("+")  # the first CVM row is selected: mec-north-snp
        await page.wait_text(f"{HOSTS[0]}/{HOSTS[0]}-snp scale 2->3 ok")
        assert [(e["cvm"], e["action"], e["before"], e["after"]) for e in demo.audit()[before:]] == [
            (f"{HOSTS[0]}-snp", "scale", 2, 3)
        ]
        await page.type("q")  # the visitor's console quits: the page says so, the server goes on
        await page.wait_for("document.body.classList.contains('-closed')")
    assert "console closed for 127.0.0.1 (0 open)" in "".join(server.out)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--port", "http"], "--port 'http': not a number; give a TCP port from 1 to 65535 (0: any free port)"),
        (["--port", "65536"], "--port 65536: out of range; give a TCP port from 1 to 65535 (0: any free port)"),
        (["--port", "-1"], "--port -1: out of range; give a TCP port from 1 to 65535 (0: any free port)"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: would listen on every network; give the one address visitors use"),
        (["--host", "::"], "--host ::: would listen on every network; give the one address visitors use"),
        (["--host", "example.org"], "--host 'example.org': not an IP address; give one address of this machine"),
        (["--readonly", "--allow-changes"], "--readonly and --allow-changes cannot go together"),
        (["--lab"], "--serve and --lab cannot go together: serve the site file that `hostctl lab up` writes (--site)"),
    ],
)
def test_bad_serve_options_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], line: str) -> None:
    assert main(["--serve", *args]) == 2
    assert capsys.readouterr() == ("", f"dittotui: {line}\n")


@pytest.mark.parametrize("flag", [["--port", "8000"], ["--host", "127.0.0.1"], ["--allow-changes"]])
def test_serve_options_need_serve(capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    assert main(flag) == 2
    assert capsys.readouterr() == ("", f"dittotui: {flag[0]} goes with --serve\n")


def test_a_port_in_use_is_one_line_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--serve", "--port", str(port)]) == 2
    assert capsys.readouterr() == ("", f"dittotui: cannot listen on http://127.0.0.1:{port}: in use\n")


def test_a_bad_site_file_is_one_line_and_serves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[[hosts]]\nname = "mec-1"\nsocket = 7\n')
    with pytest.raises(HostctlError) as bad:
        load_site(path)
    assert main(["--serve", "--port", "0", "--site", str(path)]) == 2
    assert capsys.readouterr() == ("", f"dittotui: {bad.value}\n")
