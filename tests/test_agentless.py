"""Hosts with no agent installed, up to where a hypervisor is needed: the site file's rules, the child's argv and
libvirt URI, the OpenSSH wrapper libvirt runs (checked with OpenSSH's own `ssh -G`), and host keys refused through a
real sshd before anything reaches libvirt. The lab tier (`tests/real/test_agentless_lab.py`) covers the rest."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from dittotui.tables.hosts import HostsTable, host_cell, host_row
from hostctl import data
from hostctl.client import local_agent
from hostctl.client import site as sites
from hostctl.client.link import HostLink, LinkState
from hostctl.client.local_agent import LocalAgent, agent_argv, agent_uri, wrapper_text
from hostctl.client.site import Defaults, HostEntry
from hostctl.errors import ConfigError
from tests.support import ROOT
from tests.support.ssh import SSHEndpoint, public_line

URI = "qemu+ssh://ops@mec-3.example.net/system"


def load_text(tmp_path: Path, hosts: str) -> sites.Site:
    path = tmp_path / "site.toml"
    path.write_text(hosts)
    return sites.load(path)


# -- the site file ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        URI,
        "qemu+ssh://mec-3/system",  # an ~/.ssh/config alias
        "qemu+ssh://root@127.0.0.1:2222/system",
        "qemu+ssh://ops@[2001:db8::1]:22/session",
        "qemu+ssh://ops@mec-3/system?keyfile=/home/ops/.ssh/id_ed25519&mode=legacy&proxy=native",
        "qemu+ssh://ops@mec-3/system?no_verify=0&no_tty=1&socket=/run/libvirt/libvirt-sock",
    ],
)
def test_a_uri_alone_is_a_host_with_no_agent(tmp_path: Path, uri: str) -> None:
    site = load_text(tmp_path, f'[[hosts]]\nname = "mec-3"\nuri = "{uri}"\n')
    (host,) = site.hosts
    assert host.agentless and host.uri == uri
    assert host.target() == (None, None, None)
    again = tmp_path / "again.toml"
    sites.write(site, again)
    assert sites.load(again) == site


def test_a_uri_beside_ssh_or_socket_stays_informational(tmp_path: Path) -> None:
    site = load_text(
        tmp_path,
        '[[hosts]]\nname = "a"\nssh = "ops@a"\nuri = "qemu:///system"\n'
        '[[hosts]]\nname = "b"\nsocket = "/run/b.sock"\nuri = "qemu+ssh://b/system?no_verify=1"\n',
    )
    assert [h.agentless for h in site.hosts] == [False, False]


def test_the_example_site_has_a_host_with_no_agent() -> None:
    site = sites.load(data.SITE_EXAMPLE)
    assert [(h.name, h.uri) for h in site.hosts if h.agentless] == [("mec-3", URI)]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'uri = "qemu:///system"',
            r"uri = 'qemu:///system' \(no ssh or socket: a host with no agent\) must be a "
            r"remote libvirt URI over SSH \(qemu\+ssh://\[user@\]host\[:port\]/system\)",
        ),
        ('uri = "qemu+tcp://mec-3/system"', r"uri = 'qemu\+tcp://mec-3/system' .* must be a remote libvirt URI over"),
        ('uri = "qemu+ssh:///system"', r"uri = 'qemu\+ssh:///system' .* names no host"),
        ('uri = "qemu+ssh://-oProxyCommand=x/system"', r"has a bad host part '-oProxyCommand=x'"),
        ('uri = "qemu+ssh://mec-3:99999/system"', r"has a bad host part 'mec-3:99999': port '99999' must be"),
        ('uri = "qemu+ssh://mec-3/"', r"path '/' must be one of /system, /session"),
        ('uri = "qemu+ssh://mec-3/system?no_verify=1"', r"no_verify=1: must be 0: host keys are always verified"),
        ('uri = "qemu+ssh://mec-3/system?command=/bin/true"', r"command=/bin/true: is set by hostctl"),
        ('uri = "qemu+ssh://mec-3/system?known_hosts=/dev/null"', r"known_hosts=/dev/null: is for libvirt's libssh"),
        ('uri = "qemu+ssh://mec-3/system?known_hosts_verify=ignore"', r"known_hosts_verify=ignore: is for libvirt"),
        ('uri = "qemu+ssh://mec-3/system?no_tty=0"', r"no_tty=0: must be 1"),
        ('uri = "qemu+ssh://mec-3/system?mode=fast"', r"mode=fast: must be one of auto, legacy, direct"),
        ('uri = "qemu+ssh://mec-3/system?keyfile=id_rsa"', r"keyfile=id_rsa: must be an absolute path"),
        ('uri = "qemu+ssh://mec-3/system?color=red"', r"color=red: is not a parameter hostctl passes \(known: "),
        ('uri = "qemu+ssh://mec-3/system#x"', r"must have no '#' fragment"),
        (
            f'uri = "{URI}"\nagent = ["hostctl", "agent", "--stdio"]',
            r"agent = \['hostctl', 'agent', '--stdio'\] "
            r"needs ssh = \"user@host\"; a host with no agent \(uri alone\) runs hostctl's own agent on this machine",
        ),
        (
            f'uri = "{URI}"\njump = "bastion"',
            r"jump = 'bastion' needs ssh = .* set ProxyJump in the file named by "
            r"defaults\.ssh_config",
        ),
        (
            "services = []",
            r'give ssh = "user@host" or socket = "/path" \(its agent\), or uri = '
            r'"qemu\+ssh://user@host/system" alone \(a host with no agent\)',
        ),
    ],
)
def test_bad_hosts_with_no_agent_are_one_line_naming_file_field_and_value(
    tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(tmp_path))}/site\.toml: hosts\[1\]: host 'mec-3': .*{message}"
    ) as info:
        load_text(tmp_path, f'[[hosts]]\nname = "ok"\nsocket = "/run/ok.sock"\n[[hosts]]\nname = "mec-3"\n{entry}\n')
    assert "\n" not in str(info.value)


# -- the child, its URI and the OpenSSH wrapper ---------------------------------------------------------------------


def test_the_child_runs_this_hostctl_agent_with_the_wrapper_and_no_tty(tmp_path: Path) -> None:
    wrapper = tmp_path / "with space & more" / "ssh"
    quoted = f"{tmp_path}/with%20space%20%26%20more/ssh"
    assert agent_uri(URI, wrapper) == f"{URI}?command={quoted}&no_tty=1"
    assert agent_uri(URI + "?keyfile=/k", wrapper) == f"{URI}?keyfile=/k&command={quoted}&no_tty=1"
    assert agent_argv(URI, wrapper, tmp_path / "audit.jsonl") == [
        sys.executable,
        "-m",
        "hostctl",
        "--uri",
        f"{URI}?command={quoted}&no_tty=1",
        "agent",
        "--stdio",
        "--audit",
        str(tmp_path / "audit.jsonl"),
    ]


def test_each_host_has_its_own_state_directory(tmp_path: Path) -> None:
    a = HostEntry(name="mec-3", uri=URI)
    b = HostEntry(name="mec-3", uri="qemu+ssh://ops@elsewhere/system")
    assert local_agent.state_dir(a, tmp_path).parent == tmp_path
    assert local_agent.state_dir(a, tmp_path).name.startswith("mec-3-")
    assert local_agent.state_dir(a, tmp_path) != local_agent.state_dir(b, tmp_path)
    assert local_agent.state_root() == Path(os.environ["XDG_STATE_HOME"]) / "dittotui" / "agentless"


def test_the_wrapper_needs_a_plain_interpreter_path() -> None:
    with pytest.raises(local_agent.LocalAgentError, match="a path with no spaces"):
        wrapper_text("/opt/my python/bin/python", ["ssh"])
    with pytest.raises(local_agent.LocalAgentError):
        wrapper_text("python3", ["ssh"])


def effective_ssh_options(wrapper: Path, *libvirt_args: str) -> dict[str, str]:
    """What OpenSSH would use (`ssh -G`) when libvirt runs the wrapper with `libvirt_args`."""
    argv = [str(wrapper), "-G", *libvirt_args, "--", "mec-3.example.net", "sh", "-c", "true"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_the_wrapper_checks_host_keys_strictly_whatever_libvirt_or_the_config_say(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known hosts%d"
    known_hosts.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /tmp/other\n  GlobalKnownHostsFile /etc/ssh/x\n"
        "  BatchMode no\n  ControlMaster auto\n  ControlPath /tmp/cm-%r\n  UpdateHostKeys yes\n  User cfguser\n"
    )
    agent = LocalAgent(HostEntry(name="mec-3", uri=URI), Defaults(known_hosts=str(known_hosts), ssh_config=str(config)))
    agent.prepare()
    assert agent.wrapper.stat().st_mode & 0o777 == 0o700 and agent.dir.stat().st_mode & 0o777 == 0o700
    # What libvirt 9.0's ssh transport passes, with no_verify=1 sneaked in: the site's options still win.
    seen = effective_ssh_options(
        agent.wrapper, "-p", "2222", "-l", "ops", "-T", "-e", "none", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
    )  # fmt: skip
    assert seen["stricthostkeychecking"] == "true"
    assert seen["userknownhostsfile"] == str(known_hosts)  # one file, spaces and '%' kept
    assert seen["globalknownhostsfile"] == "/dev/null"
    assert seen["batchmode"] == "yes"
    assert seen["updatehostkeys"] == "false"
    assert "controlpath" not in seen and seen["controlmaster"] == "false"
    assert "knownhostscommand" not in seen
    assert (seen["user"], seen["port"], seen["hostname"]) == ("ops", "2222", "mec-3.example.net")
    assert seen["connecttimeout"] == "5" and seen["serveraliveinterval"] == "5"


def test_without_known_hosts_nothing_starts(tmp_path: Path) -> None:
    defaults = Defaults(known_hosts=str(tmp_path / "missing"))
    with pytest.raises(local_agent.LocalAgentError, match=r"known_hosts file .*missing does not exist; host keys"):
        LocalAgent(HostEntry(name="mec-3", uri=URI), defaults).prepare()


async def test_stop_ends_a_child_that_ignores_its_peer_and_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_agent, "STOP_GRACE", 0.3)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    monkeypatch.setattr(LocalAgent, "argv", lambda self: [sys.executable, "-c", stubborn])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    agent = LocalAgent(HostEntry(name="mec-3", uri=URI), Defaults(known_hosts=str(known_hosts)))
    reader, _writer = await agent.start()
    assert await asyncio.wait_for(reader.readline(), 10) == b"up\n"
    pid = agent.pid
    assert pid is not None and await agent.exit_reason(wait=0.1) is None  # still running
    await agent.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert agent.pid is None


# -- host keys, through a real sshd ---------------------------------------------------------------------------------


@pytest.fixture
def sshd(openssh_server: SSHEndpoint) -> SSHEndpoint:
    """A real OpenSSH sshd on loopback (the shared fixture), as the host with no agent."""
    return openssh_server


def agentless_link(endpoint: SSHEndpoint, tmp_path: Path, known_hosts: Path, *, user: str = "") -> HostLink:
    """A link to `endpoint` as a host with no agent (its client key given with keyfile=)."""
    user = user or endpoint.user
    uri = f"qemu+ssh://{user}@{endpoint.host}:{endpoint.port}/system?keyfile={endpoint.client_key}"
    defaults = Defaults(
        interval=0.2, timeout=5.0, backoff_max=60.0, known_hosts=str(known_hosts), ssh_config=str(tmp_path / "none")
    )
    return HostLink(HostEntry(name="mec-3", uri=uri), defaults)


async def refused(link: HostLink, endpoint: SSHEndpoint) -> str:
    """Start `link`, wait for its first attempt to end, stop it; its error, after checking nothing is left."""
    link.start()
    try:
        await link.ready(10)
    finally:
        await link.stop()
    assert link.state is LinkState.CONNECTING and link.snapshot is None
    assert link.local_pid is None
    assert endpoint.session_pids() == [], "no session may have started on the host"
    return link.error


async def test_an_unknown_host_key_is_refused_with_its_fingerprint(sshd: SSHEndpoint, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port + 1} {sshd.host_public_key}\n")  # another port: another host
    error = await refused(agentless_link(sshd, tmp_path, known_hosts), sshd)
    assert error == (
        f"host key of {sshd.user}@{sshd.host}:{sshd.port} is not in known_hosts: {sshd.host_key_fingerprint}; "
        f"refused. Check it out of band, then update {known_hosts}"
    )
    assert known_hosts.read_text() == f"[{sshd.host}]:{sshd.port + 1} {sshd.host_public_key}\n", "never accepted"


async def test_a_changed_host_key_is_refused_as_such(sshd: SSHEndpoint, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    other = public_line(asyncssh.generate_private_key("ssh-ed25519"))
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {other}\n")
    error = await refused(agentless_link(sshd, tmp_path, known_hosts), sshd)
    assert error.startswith(f"host key of {sshd.user}@{sshd.host}:{sshd.port} is CHANGED (possible man-in-the-")
    assert sshd.host_key_fingerprint in error and "\n" not in error


async def test_a_child_that_exits_shows_its_last_error(sshd: SSHEndpoint, tmp_path: Path) -> None:
    link = agentless_link(sshd, tmp_path, sshd.known_hosts, user="no-such-user")  # the server lets nobody in
    error = await refused(link, sshd)
    log = local_agent.state_dir(link.entry) / "agent.log"
    assert error.startswith(f"its local agent exited (status 2): cannot open libvirt URI '{link.entry.uri}': "), error
    assert "Permission denied" in error and error.endswith(f"(log: {log})") and "command=" not in error
    assert "Traceback" not in log.read_text()


def test_site_status_prints_the_refusal_and_no_traceback(sshd: SSHEndpoint, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    site = tmp_path / "site.toml"
    sites.write(
        sites.Site(
            defaults=Defaults(known_hosts=str(known_hosts), timeout=5.0),
            hosts=[HostEntry(name="mec-3", uri=f"qemu+ssh://{sshd.user}@{sshd.host}:{sshd.port}/system")],
        ),
        site,
    )
    argv = [sys.executable, "-m", "hostctl", "--site", str(site), "status"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"mec-3: connecting (host key of {sshd.user}@{sshd.host}:{sshd.port} is not in known_hosts: "
        f"{sshd.host_key_fingerprint}; refused. Check it out of band, then update {known_hosts})"
    ]
    assert done.stderr == ""


# -- the console's mark ---------------------------------------------------------------------------------------------


def test_the_hosts_table_marks_a_host_with_no_agent(tmp_path: Path) -> None:
    agentless = HostLink(HostEntry(name="mec-3", uri=URI), Defaults())
    with_agent = HostLink(HostEntry(name="mec-1", ssh="ops@mec-1"), Defaults())
    assert host_row(agentless)[0] == ("mec-3", True) and host_row(with_agent)[0] == ("mec-1", False)
    assert str(host_cell(("mec-3", True))) == "mec-3 ◇"
    assert host_cell(("mec-1", False)) == "mec-1"
    assert HostsTable.COLUMNS[0].render is host_cell


def test_the_exit_line_is_the_error_not_the_noise_after_it() -> None:
    said = "hostctl: cannot open libvirt URI 'qemu+ssh://h/system': Cannot recv data: No key\r\nHost key failed.\n"
    assert local_agent._last_error("--- header\n" + said) == (
        "cannot open libvirt URI 'qemu+ssh://h/system': Cannot recv data: No key Host key failed."
    )
    crashed = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "libvirt.libvirtError: Domain not found\n"
        'Traceback (most recent call last):\n  File "libvirtaio.py", line 418\nRuntimeError: Event loop is closed\n'
    )
    assert local_agent._last_error(crashed) == "libvirt.libvirtError: Domain not found"
    assert local_agent._last_error("just this\nand then this\n") == "and then this"
    assert local_agent._last_error("") == ""
