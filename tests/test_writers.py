"""Who may change what: a real `hostctl serve` reached by a second real user (nobody, uid 65534), and the stdio
form. A reader reads; its scale and policy changes are refused and audited; a writer, by user or by group, scales."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dittotui.app import DittoApp
from hostctl.client.ref import CVMRef
from hostctl.client.site import Defaults
from hostctl.client.site import load as load_site
from hostctl.wire import rpc
from tests.support import ROOT
from tests.support.agents import answers_hello
from tests.support.nodes import make_node

NOBODY = 65534

# A JSON-RPC client on the standard library only, run by the system's Python as nobody (the venv's interpreter may
# live where nobody cannot reach it): one request per argument, one reply per line printed.
CLIENT = """
import json, socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(20)
    s.connect(sys.argv[1])
    f = s.makefile("rwb")
    for i, request in enumerate(sys.argv[2:]):
        method, params = json.loads(request)
        f.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode() + b"\\n")
        f.flush()
        print(f.readline().decode().strip(), flush=True)
"""


def _system_python() -> str:
    for candidate in ("/usr/bin/python3", "/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system python3 for the second user to run a client with")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs a client as a second user (nobody)")
    directory = Path(tempfile.mkdtemp(prefix="writers-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory)


def hostctl(tmp_path: Path) -> list[str]:
    """`hostctl --uri` a test-driver host with one CVM of each security type."""
    return [sys.executable, "-m", "hostctl", "--uri", f"test://{make_node(tmp_path)}"]


class Served:
    """`hostctl serve` as its own process, its socket open to the group nogroup."""

    def __init__(self, tmp_path: Path, socket: Path, *extra: str) -> None:
        self.socket = socket
        self.audit = tmp_path / "audit.jsonl"
        self.argv = [
            *hostctl(tmp_path),
            "serve",
            "--socket",
            str(socket),
            "--group",
            "nogroup",
            "--audit",
            str(self.audit),
            "--probe-rate",
            "0",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(subprocess.Popen, self.argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        if not await answers_hello(self.socket, tries=300):
            raise AssertionError("hostctl serve did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)

    async def as_nobody(self, *requests: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Send `requests` as uid/gid nobody with no other groups; their replies."""
        done = await asyncio.to_thread(
            subprocess.run,
            [_system_python(), "-I", "-c", CLIENT, str(self.socket), *(json.dumps(r) for r in requests)],
            capture_output=True,
            text=True,
            timeout=30,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    async def online(self) -> int:
        snapshot = await rpc.call_unix(str(self.socket), "snapshot")
        return next(c["online_vcpus"] for c in snapshot["cvms"] if c["name"] == "snp")

    def audited(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, socket: Path, *extra: str) -> AsyncIterator[Served]:
    served = Served(tmp_path, socket, *extra)
    await served.start()
    try:
        yield served
    finally:
        served.stop()


async def test_a_reader_reads_and_its_changes_are_refused_and_audited(tmp_path: Path, shared_dir: Path) -> None:
    async with serving(tmp_path, shared_dir / "agent.sock") as served:
        mode = served.socket.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == NOBODY
        hello, snapshot, scale, policy, read = await served.as_nobody(
            ("hello", {"client": "eve"}),
            ("snapshot", {}),
            ("scale", {"cvm": "snp", "target": 3, "expect": 2}),
            ("policy", {"cvm": "snp", "enabled": True}),
            ("policy", {"cvm": "snp"}),
        )
        assert hello["result"]["user"] == "nobody@socket" and hello["result"]["may_write"] is False
        assert hello["result"]["readonly"] is False  # the agent itself writes; this peer does not
        assert [c["name"] for c in snapshot["result"]["cvms"]] == ["es", "plain", "sev", "snp"]
        for refused in (scale, policy):
            assert refused["error"]["code"] == rpc.REFUSED
            message = refused["error"]["message"]
            assert message.startswith("nobody may only read on this agent") and "--writers" in message
            assert "\n" not in message
        assert scale["error"]["data"] == {"current": 2}
        assert read["result"]["enabled"] is False
        assert await served.online() == 2
        scale_event, policy_event = served.audited()
        assert (scale_event["action"], scale_event["ok"], scale_event["who"]) == ("scale", False, "eve (nobody@socket)")
        assert (scale_event["before"], scale_event["after"]) == (2, 2)
        assert scale_event["why"].endswith("(requested 3 vCPUs)")
        assert (policy_event["action"], policy_event["ok"], policy_event["who"]) == (
            "policy",
            False,
            "eve (nobody@socket)",
        )
        assert policy_event["why"].endswith("(requested on)")
        # The agent's own user (root here) is a writer by default.
        assert (await rpc.call_unix(str(served.socket), "hello"))["may_write"] is True


@pytest.mark.parametrize("writers", ["alice,nobody", "@nogroup"])
async def test_a_listed_writer_scales(tmp_path: Path, shared_dir: Path, writers: str) -> None:
    async with serving(tmp_path, shared_dir / "agent.sock", "--writers", writers) as served:
        hello, scale = await served.as_nobody(("hello", {}), ("scale", {"cvm": "snp", "target": 3, "expect": 2}))
        assert hello["result"]["may_write"] is True
        assert (scale["result"]["ok"], scale["result"]["after"]) == (True, 3)
        assert await served.online() == 3
        # Listing writers replaces the default: root is not among them now.
        with pytest.raises(rpc.RpcError, match="root may only read"):
            await rpc.call_unix(str(served.socket), "scale", cvm="snp", target=4)
        assert [(e["ok"], e["after"]) for e in served.audited()] == [(True, 3), (False, 3)]


def test_stdio_peer_is_the_ssh_user(tmp_path: Path) -> None:
    """`ssh host hostctl agent --stdio`: the peer is the process's own user, seen from SSH_CLIENT's address."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "scale", "params": {"cvm": "snp", "target": 3, "who": "op"}},
    ]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    audit = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [*hostctl(tmp_path), "agent", "--stdio", "--audit", str(audit), "--probe-rate", "0", "--writers", "alice,@x"],
        check=False,
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "SSH_CLIENT": "192.0.2.7 50022 22"},
    )
    hello, scale = (json.loads(line) for line in done.stdout.splitlines())
    assert hello["result"]["user"] == f"{user}@ssh:192.0.2.7" and hello["result"]["may_write"] is False
    assert scale["error"]["code"] == rpc.REFUSED and scale["error"]["message"].startswith(f"{user} may only read")
    (event,) = (json.loads(line) for line in audit.read_text().splitlines())
    assert event["ok"] is False and event["who"] == f"op ({user}@ssh:192.0.2.7)"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--writers", "alice,,bob"], "--writers: '' is not a user name or @group"),
        (["--writers", "al ice"], "--writers: 'al ice' is not a user name or @group"),
        (["--group", "no-such-group-here"], "--group: no group 'no-such-group-here' on this host"),
    ],
)
def test_bad_access_options_exit_2_with_one_line(tmp_path: Path, option: list[str], message: str) -> None:
    done = subprocess.run(
        [
            *hostctl(tmp_path),
            "serve",
            "--socket",
            str(tmp_path / "agent.sock"),
            "--audit",
            str(tmp_path / "a"),
            *option,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"hostctl: {message}")
    assert not (tmp_path / "agent.sock").exists()


async def test_the_console_says_when_it_may_only_read(tmp_path: Path) -> None:
    """A console whose user is not one of the agent's writers says so when the host comes up, and its scale shows
    the agent's refusal; nothing changes."""
    async with serving(tmp_path, tmp_path / "agent.sock", "--writers", "nobody") as served:
        site_file = tmp_path / "site.toml"
        site_file.write_text(f'[[hosts]]\nname = "edge"\nsocket = "{served.socket}"\n')
        site = load_site(site_file)
        site.defaults = Defaults(interval=0.2, timeout=2.0, backoff_max=0.5)
        app = DittoApp(site=site, refresh=0.05)
        async with app.run_test() as pilot:
            lines = app.query_one("#events")

            def logged(text: str) -> bool:  # the log wraps its lines: read them as one text
                return re.search(text, " ".join(line.text.rstrip() for line in lines.lines)) is not None  # type: ignore[attr-defined]

            for _ in range(200):
                if logged("edge: live"):
                    break
                await pilot.pause(0.05)
            assert logged(re.escape("edge: live (read-only for root@socket: not one of the agent's writers;"))
            app.scale_cvms([CVMRef("edge", "snp")], +1)
            for _ in range(200):
                if logged("REFUSED"):
                    break
                await pilot.pause(0.05)
            # Shown once, from whichever comes first: the agent's audit event (`scale at 2 REFUSED`) or its reply.
            assert logged("edge/snp scale (at 2 )?REFUSED") and logged("root may only read on this agent")
        assert await served.online() == 2
