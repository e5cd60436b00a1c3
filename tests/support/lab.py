"""The lab site as tests and benchmarks use it: one running lab, the guest's own view, libvirt's own client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hostctl.lab import libvirtd, procs
from hostctl.lab.runtime import Lab
from tests.support import ROOT

URI = libvirtd.URI
UP_TIMEOUT = 330  # libvirtd, the image (built once), three TCG boots on a busy machine, the agent
CALL_TIMEOUT = 90  # one CLI call against the running lab
TEST_PREFIX = "ditto-test-"  # then the session's pid: domains of a session that died can be told apart
GUESTS = ("snp-1", "snp-2", "plain")


def hostctl(*args: str | Path, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the hostctl CLI of this tree (never a shell) with a deadline."""
    argv = [sys.executable, "-m", "hostctl", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def virsh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """libvirt's own client, for views that do not go through hostctl."""
    argv = ["virsh", "--connect", URI, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class GuestView:
    """The vCPUs as the guest itself sees them."""

    present: int
    online: int


def guest_view(domain: str) -> GuestView:
    """Ask the guest's agent (`guest-get-vcpus`, 10 s timeout) how many vCPUs it has and has online."""
    done = virsh("qemu-agent-command", domain, '{"execute": "guest-get-vcpus"}', "--timeout", "10")
    assert done.returncode == 0, f"guest agent of {domain}: {done.stderr.strip()}"
    return _view(done.stdout)


def guest_view_if_answering(domain: str, timeout: int = 5) -> GuestView | None:
    """The guest's own view, or None while its agent does not answer (killed, restarting, not reattached)."""
    done = virsh("qemu-agent-command", domain, '{"execute": "guest-get-vcpus"}', "--timeout", str(timeout))
    return _view(done.stdout) if done.returncode == 0 else None


def _view(reply: str) -> GuestView:
    vcpus = json.loads(reply)["return"]
    return GuestView(present=len(vcpus), online=sum(1 for v in vcpus if v["online"]))


def libvirt_live_vcpus(domain: str) -> int:
    """The vCPUs plugged into the running domain, as libvirt counts them."""
    done = virsh("vcpucount", domain, "--live", "--active")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def prefixed_domains(prefix: str) -> list[str]:
    done = virsh("list", "--all", "--name")
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.split() if name.startswith(prefix)]


@dataclass(frozen=True)
class LabSite:
    """A running lab: its runtime directory, domain prefix, site file and what `lab up` printed."""

    runtime: Path
    prefix: str
    up: str
    booted: dict[str, GuestView]  # each guest's own view right after `lab up`, before any test changed it

    @property
    def site(self) -> Path:
        return Lab(self.runtime).site

    def cvm(self, name: str) -> str:
        return self.prefix + name


def start() -> LabSite:
    """`lab up` in a fresh runtime under the temp dir (QEMU runs as its own user and must reach the boot files),
    with this process's pid in the domain prefix; domains of earlier sessions that died are removed first."""
    runtime = Path(tempfile.mkdtemp(prefix="dittotui-lab-test-"))
    prefix = f"{TEST_PREFIX}{os.getpid()}-"
    sweep_dead_sessions()
    done = hostctl("lab", "up", "--runtime", runtime, "--prefix", prefix, timeout=UP_TIMEOUT)
    if done.returncode != 0:
        sweep(runtime, prefix)
        raise AssertionError(f"lab up failed: {done.stderr.strip()}")
    return LabSite(runtime, prefix, done.stdout, {name: guest_view(prefix + name) for name in GUESTS})


def sweep_dead_sessions() -> None:
    """Domains of an earlier session killed before its teardown (its pid is in their prefix) are removed."""
    if not libvirtd.answers():
        return
    for name in prefixed_domains(TEST_PREFIX):
        session = re.match(rf"{TEST_PREFIX}(\d+)-", name)
        if session and not procs.running(int(session.group(1))):
            virsh("destroy", name)
            virsh("undefine", name)


def sweep(runtime: Path, prefix: str) -> None:
    """Whatever `lab down` left: prefixed domains, then the daemons the lab started, then the directory."""
    if libvirtd.answers():
        for name in prefixed_domains(prefix):
            virsh("destroy", name)
            virsh("undefine", name)
    if runtime.is_dir():
        if not _others(prefix):
            libvirtd.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def _others(prefix: str) -> list[str]:
    """Domains that are not this lab's (another lab's, anybody's): they need libvirtd."""
    return [name for name in prefixed_domains("") if not name.startswith(prefix)] if libvirtd.answers() else []


def qemu_processes(prefix: str) -> list[int]:
    """Processes whose command line names a guest with `prefix` (QEMU runs with -name guest=NAME,...)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            proc.name.isdigit()
            and procs.running(int(proc.name))
            and any(a.startswith(b"guest=" + prefix.encode()) for a in argv)
        ):
            found.append(int(proc.name))
    return found


def stop_and_check(lab: LabSite) -> None:
    """`lab down`, then look for anything left: the agent, the guests' QEMUs, the daemons `up` started."""
    started = {d.name: d.pid() for d in libvirtd.daemons() if d.pid() is not None}
    agent = Lab(lab.runtime).agent_pid()
    assert agent is not None
    assert len(qemu_processes(lab.prefix)) == len(GUESTS), "the scan below must see the running guests"
    done = hostctl("lab", "down", "--runtime", lab.runtime)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for name in GUESTS:
        assert f"{lab.cvm(name)}: destroyed and undefined" in done.stdout
    assert not procs.running(agent), "the host agent still runs"
    if "libvirtd left running" in done.stdout:  # another user's guests run on the libvirtd the lab started
        started.clear()
    for name, pid in started.items():
        assert f"{name}: stopped (pid {pid})" in done.stdout
        assert not procs.running(pid), f"the {name} the lab started still runs"
    if "libvirtd" in started:
        assert not libvirtd.answers(), "the libvirtd the lab started still serves"
    else:
        assert libvirtd.answers(), "lab down stopped a libvirtd it did not start"
        assert prefixed_domains(lab.prefix) == []
    assert qemu_processes(lab.prefix) == [], "a QEMU of the lab still runs"
    assert not lab.runtime.exists()
