"""The `hostctl` command as a user runs it: one clear line and status 2 for bad input, nothing changed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostctl import data
from tests.support import ROOT
from tests.support.nodes import make_node


def hostctl(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "hostctl", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hostctl: ") and message in lines[0], proc.stderr


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"test://{make_node(tmp_path)}"


def test_status_table_and_json(uri: str) -> None:
    table = hostctl("--uri", uri, "status", "--sample", "0", check=True).stdout
    assert "snp" in table and "sev-snp" in table and "0x30000 smt-allowed,reserved-1" in table
    data = json.loads(hostctl("--uri", uri, "status", "--json", "--sample", "0", check=True).stdout)
    assert {c["name"]: c["security"] for c in data["cvms"]} == {
        "es": "sev-es",
        "plain": "none",
        "sev": "sev",
        "snp": "sev-snp",
    }


def test_scale_reports_the_change(uri: str) -> None:
    assert "/snp: 2 -> 4 vCPUs" in hostctl("--uri", uri, "scale", "snp", "4", "--expect", "2", check=True).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("scale", "ghost", "2"), "unknown CVM 'ghost' on vm (known: es, plain, sev, snp)"),
        (("scale", "snp", "9"), "9 vCPUs is outside boot..max (1..5)"),
        (("scale", "snp", "3", "--expect", "4"), "expected 4 online vCPUs but found 2; nothing changed"),
    ],
)
def test_bad_scale_requests(uri: str, args: tuple[str, ...], message: str) -> None:
    refused(hostctl("--uri", uri, *args), message)


def test_hotplug_on_snp_is_refused(tmp_path: Path) -> None:
    uri = f"test://{make_node(tmp_path, driver='hotplug')}"
    refused(hostctl("--uri", uri, "scale", "snp", "3"), "hotplug refused for sev-snp")


def test_unreachable_uri() -> None:
    refused(hostctl("--uri", "test:///no/such.xml", "status"), "cannot open libvirt URI 'test:///no/such.xml'")
    refused(hostctl("--uri", "qemu+tcp://127.0.0.1:1/system", "status"), "cannot open libvirt URI")


def test_missing_uri() -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "hostctl", "status"], capture_output=True, text=True, env=env_free, check=False
    )
    refused(proc, "no host given: pass --uri URI")


def test_malformed_demo_config_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "demo.toml"
    bad.write_text(data.DEMO_CONFIG.read_text().replace("cpus = 16", "cpus = -1", 1))
    runtime = tmp_path / "run"
    refused(
        hostctl("demo", "up", "--config", str(bad), "--runtime", str(runtime)),
        "demo.toml: hosts[0].cpus: -1 must be > 0",
    )
    assert not list(runtime.glob("*.pid")) if runtime.exists() else True


def test_demo_up_status_down(tmp_path: Path) -> None:
    runtime = str(tmp_path / "run")
    try:
        up = hostctl("demo", "up", "--runtime", runtime, check=True).stdout
        assert up.count("started") == 3
        again = hostctl("demo", "up", "--runtime", runtime, check=True).stdout
        assert again.count("already running") == 3
        entries = json.loads(hostctl("demo", "status", "--json", "--runtime", runtime, check=True).stdout)
        assert [e["host"] for e in entries] == ["mec-1", "mec-2", "regional-1"]
        snap = entries[0]["snapshot"]
        assert {c["security"] for c in snap["cvms"]} == {"sev-snp", "sev-es", "sev", "none"}
        assert all(s["url"].startswith("http://127.0.0.1:") for s in snap["services"])
        pids = [e["pid"] for e in entries]
    finally:
        down = hostctl("demo", "down", "--runtime", runtime, check=True).stdout
    assert down.count("stopped") == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not list(Path(runtime).glob("*.sock")) and not list(Path(runtime).glob("*.pid"))


def test_site_commands_over_the_demo_site_file(tmp_path: Path) -> None:
    """`demo up` writes a site file; status, scale and audit then go through the same links as a real site."""
    runtime = tmp_path / "run"
    try:
        up = hostctl("demo", "up", "--runtime", str(runtime), check=True).stdout
        site = runtime / "site.toml"
        assert f"site file: {site}" in up
        status = json.loads(hostctl("--site", str(site), "status", "--json", check=True).stdout)
        assert [(h["name"], h["state"]) for h in status["hosts"]] == [
            ("mec-1", "fresh"),
            ("mec-2", "fresh"),
            ("regional-1", "fresh"),
        ]
        assert status["hosts"][0]["snapshot"]["host"]["name"] == "mec-1"
        scaled = hostctl("--site", str(site), "scale", "mec-2/media-es", "3", "--expect", "1", check=True).stdout
        assert scaled.strip() == "mec-2/media-es: 1 -> 3 vCPUs"
        again = hostctl("--site", str(site), "scale", "mec-2/media-es", "3", "--expect", "1", check=True).stdout
        assert "already at 3 vCPUs; nothing changed" in again
        refused(
            hostctl("--site", str(site), "scale", "mec-2/media-es", "2", "--expect", "1"),
            "expected 1 online vCPUs but found 3",
        )
        refused(hostctl("--site", str(site), "scale", "media-es", "2"), "name the CVM as HOST/CVM")
        refused(hostctl("--site", str(site), "scale", "mec-9/x", "2"), "unknown host 'mec-9'")
        audit = hostctl("--site", str(site), "audit", check=True).stdout.splitlines()
        assert len(audit) == 3 and "mec-2/media-es scale 1->3 ok" in audit[0]
        assert "mec-2/media-es scale at 3 REFUSED" in audit[2] and audit[2].endswith("(requested 2 vCPUs, why: manual)")
        lines = hostctl("--site", str(site), "audit", "--json", check=True).stdout.splitlines()
        assert [json.loads(line)["after"] for line in lines] == [3, 3, 3]  # a refusal: the count it stayed at
    finally:
        hostctl("demo", "down", "--runtime", str(runtime))
    down_status = hostctl("--site", str(runtime / "site.toml"), "status")
    refused(down_status, "site.toml: no such file")


def test_unreachable_host_in_a_site_exits_1(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[defaults]\ntimeout = 1.0\n[[hosts]]\nname = "ghost"\nsocket = "/nonexistent/agent.sock"\n')
    proc = hostctl("--site", str(site), "status")
    assert proc.returncode == 1 and "ghost: connecting" in proc.stdout and "cannot reach agent socket" in proc.stdout


@pytest.mark.parametrize("stream", ["stdin", "stdout"])
def test_agent_stdio_on_a_file_is_refused_in_one_line(uri: str, tmp_path: Path, stream: str) -> None:
    """ssh gives the agent pipes; a file or /dev/null in their place once ended in a traceback."""
    file = tmp_path / "stream"
    file.write_text("")
    argv = [sys.executable, "-m", "hostctl", "--uri", uri, "agent", "--stdio", "--audit", str(tmp_path / "a.jsonl")]
    with file.open("r+") as f:
        if stream == "stdin":
            proc = subprocess.run(argv, stdin=f, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT, check=False)
        else:
            proc = subprocess.run(
                argv, input="", stdout=f, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT, check=False
            )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == f"hostctl: agent --stdio: {stream} is a regular file; run it as ssh does, with pipes or a socket"
    )


def test_serve_stops_cleanly_with_a_peer_connected(uri: str, tmp_path: Path) -> None:
    """SIGTERM while a console is subscribed once printed a CancelledError traceback at exit."""
    sock = tmp_path / "agent.sock"
    argv = [sys.executable, "-m", "hostctl", "--uri", uri, "serve", "--socket", str(sock)]
    argv += ["--audit", str(tmp_path / "audit.jsonl"), "--interval", "0.2"]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=ROOT) as agent:
        try:
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX) as peer:
                peer.connect(str(sock))
                peer.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
                assert b'"update"' in peer.recv(65536) + peer.recv(65536)
                agent.send_signal(signal.SIGTERM)
                _, stderr = agent.communicate(timeout=30)
        finally:
            agent.kill()
    assert agent.returncode == 0 and stderr == "", stderr
