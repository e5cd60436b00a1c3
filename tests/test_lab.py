"""The real-hypervisor tier: the lab site's QEMU guests under libvirtd, each result checked in the guest itself.

One lab per session (`lab up` boots its three guests in parallel), shared by every test and always taken down;
its domains carry a per-session prefix and are removed even when a test or `lab up` fails. What a guest says
(`guest-get-vcpus`, asked with virsh and a timeout) is the truth the tests hold hostctl to, not hostctl's model.
The tests run in file order: the last one takes the lab down and checks that nothing is left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostctl.errors import HostctlError
from hostctl.lab import guest, libvirtd, procs
from hostctl.lab.launcher import HOST
from hostctl.lab.runtime import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]
URI = libvirtd.URI
UP_TIMEOUT = 330  # libvirtd, the image (built once), three TCG boots on a busy machine, the agent
CALL_TIMEOUT = 90  # one CLI call against the running lab
TEST_PREFIX = "ditto-test-"  # then the session's pid: domains of a session that died can be told apart


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
    vcpus = json.loads(done.stdout)["return"]
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

    @property
    def site(self) -> Path:
        return Lab(self.runtime).site

    def cvm(self, name: str) -> str:
        return self.prefix + name


@pytest.fixture(scope="session")
def lab() -> Iterator[LabSite]:
    """The lab, up once for the session; always taken down, its domains removed even if `lab up` failed."""
    # Under the temp dir (not pytest's private tmp): QEMU runs as its own user and must reach the boot files.
    runtime = Path(tempfile.mkdtemp(prefix="dittotui-lab-test-"))
    prefix = f"{TEST_PREFIX}{os.getpid()}-"
    _sweep_dead_sessions()
    try:
        done = hostctl("lab", "up", "--runtime", runtime, "--prefix", prefix, timeout=UP_TIMEOUT)
        assert done.returncode == 0, f"lab up failed: {done.stderr.strip()}"
        yield LabSite(runtime, prefix, done.stdout)
    finally:
        hostctl("lab", "down", "--runtime", runtime, timeout=CALL_TIMEOUT)
        _sweep(runtime, prefix)


def _sweep_dead_sessions() -> None:
    """Domains of an earlier session killed before its teardown (its pid is in their prefix) are removed."""
    if not libvirtd.answers():
        return
    for name in prefixed_domains(TEST_PREFIX):
        session = re.match(rf"{TEST_PREFIX}(\d+)-", name)
        if session and not procs.running(int(session.group(1))):
            virsh("destroy", name)
            virsh("undefine", name)


def _sweep(runtime: Path, prefix: str) -> None:
    """Whatever `lab down` left: prefixed domains, then the daemons the lab started, then the directory."""
    if libvirtd.answers():
        for name in prefixed_domains(prefix):
            virsh("destroy", name)
            virsh("undefine", name)
    if runtime.is_dir():
        libvirtd.stop(runtime)
        shutil.rmtree(runtime, ignore_errors=True)


def scale(lab: LabSite, cvm: str, target: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return hostctl("--site", lab.site, "scale", f"{HOST}/{lab.cvm(cvm)}", str(target), *extra)


def test_up_boots_every_guest_and_its_agent(lab: LabSite) -> None:
    for name in ("snp-1", "snp-2", "plain"):
        assert f"{lab.cvm(name)}: guest agent answered after" in lab.up
    assert "host agent: started" in lab.up
    assert lab.site.is_file()
    # Guest-driver CVMs have every vCPU present from launch and boot with one online; the hotplug VM has one.
    assert guest_view(lab.cvm("snp-1")) == GuestView(present=4, online=1)
    assert guest_view(lab.cvm("snp-2")) == GuestView(present=4, online=1)
    assert guest_view(lab.cvm("plain")) == GuestView(present=1, online=1)


def test_guest_image_is_cached_with_its_manifest(lab: LabSite) -> None:
    image, built_now = guest.build()
    assert not built_now, "the image lab up built (or found) must be reused, not rebuilt"
    packages = image.packages()
    assert {"busybox-static", "qemu-guest-agent", "libc6"} <= set(packages)
    assert any(name.startswith("linux-image-") for name in packages)
    assert str(image.initrd.parent) in lab.up


def test_the_image_key_follows_its_inputs() -> None:
    source = guest.inputs()
    assert dataclasses.replace(source).key() == source.key()
    newer = dataclasses.replace(source, packages={**source.packages, "qemu-guest-agent": "99:0"})
    assert newer.key() != source.key(), "a new package version must rebuild the image"
    assert dataclasses.replace(source, release="9.9.9-test").key() != source.key()


def test_guest_driver_wakes_and_parks_workers_in_the_guest(lab: LabSite) -> None:
    cvm = lab.cvm("snp-1")
    for target, expect in ((3, 1), (2, 3), (4, 2), (1, 4)):
        done = scale(lab, "snp-1", target, "--expect", str(expect))
        assert done.returncode == 0, done.stderr
        assert f"{expect} -> {target} vCPUs" in done.stdout
        assert guest_view(cvm) == GuestView(present=4, online=target)
        assert libvirt_live_vcpus(cvm) == 4, "the guest driver must never hotplug"


def test_compare_and_set_refuses_against_the_guests_count(lab: LabSite) -> None:
    done = scale(lab, "snp-2", 3, "--expect", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"hostctl: {lab.cvm('snp-2')}: refused: expected 2 online vCPUs but found 1; nothing changed"
    ]
    assert guest_view(lab.cvm("snp-2")).online == 1


def test_hotplug_adds_a_vcpu_the_guest_brings_online(lab: LabSite) -> None:
    cvm = lab.cvm("plain")
    done = scale(lab, "plain", 2, "--expect", "1")
    assert done.returncode == 0, done.stderr
    assert "1 -> 2 vCPUs" in done.stdout
    assert libvirt_live_vcpus(cvm) == 2
    assert guest_view(cvm) == GuestView(present=2, online=2)


def test_lab_status_shows_each_guest_as_it_sees_itself(lab: LabSite) -> None:
    done = hostctl("lab", "status", "--runtime", lab.runtime, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    guests = {g["name"]: g for g in report["guests"]}
    assert sorted(guests) == sorted(lab.cvm(n) for n in ("snp-1", "snp-2", "plain"))
    for name, g in guests.items():
        assert g["state"] == "running"
        assert g["guest_online"] == guest_view(name).online
        assert g["libvirt_vcpus"] == libvirt_live_vcpus(name)
    assert report["agent"]["pid"] is not None and "error" not in report["agent"]
    text = hostctl("lab", "status", "--runtime", lab.runtime)
    assert text.returncode == 0, text.stderr
    for name in guests:
        assert f"{name}: running" in text.stdout


def test_site_status_shows_the_guests_with_the_guests_own_counts(lab: LabSite) -> None:
    done = hostctl("--site", lab.site, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (host,) = json.loads(done.stdout)["hosts"]
    assert (host["name"], host["state"]) == (HOST, "fresh")
    cvms = {c["name"]: c for c in host["snapshot"]["cvms"] if c["name"].startswith(lab.prefix)}
    assert sorted(cvms) == sorted(lab.cvm(n) for n in ("snp-1", "snp-2", "plain"))
    for name in ("snp-1", "snp-2"):
        c = cvms[lab.cvm(name)]
        assert (c["security"], c["driver"], c["boot_vcpus"], c["max_vcpus"]) == ("sev-snp", "guest", 1, 4)
    assert (cvms[lab.cvm("plain")]["security"], cvms[lab.cvm("plain")]["driver"]) == ("none", "hotplug")
    for name, c in cvms.items():
        assert c["state"] == "running"
        assert c["online_vcpus"] == guest_view(name).online, f"{name}: the model disagrees with the guest"


@pytest.mark.parametrize("action", ["up", "status", "down"])
def test_a_runtime_that_is_a_file_is_one_line_and_exit_2(action: str, tmp_path: Path) -> None:
    runtime = tmp_path / "not-a-dir"
    runtime.write_text("")
    done = hostctl("lab", action, "--runtime", runtime)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"hostctl: runtime directory {runtime} is not a directory"]
    assert done.stdout == ""


def test_a_runtime_qemu_cannot_enter_is_one_line_and_exit_2() -> None:
    closed = Path(tempfile.mkdtemp())  # mode 0700, in the temp dir everyone may enter
    try:
        runtime = closed / "run"
        done = hostctl("lab", "up", "--runtime", runtime)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"hostctl: runtime directory {runtime}: QEMU's user cannot enter {closed} (mode 0700); "
            f"pass --runtime under {tempfile.gettempdir()}"
        ]
        assert not runtime.exists()
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def test_a_bad_prefix_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = hostctl("lab", "up", "--runtime", tmp_path / "run", "--prefix", "../x")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "hostctl: domain prefix '../x' must be letters, digits, '.', '_' or '-' and end in '-'"
    ]
    assert not (tmp_path / "run").exists()


def test_no_kernel_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(HostctlError, match=r"no kernel in .*vmlinuz-\*.*install linux-image-amd64"):
        guest.find_kernel(boot=tmp_path)
    (tmp_path / "vmlinuz-9.9.9-test").write_bytes(b"")
    with pytest.raises(
        HostctlError, match=r"vmlinuz-9\.9\.9-test has no virtio_ring\.ko, virtio\.ko, .* under .*modules/9\.9\.9-test"
    ):
        guest.find_kernel(boot=tmp_path, modules=tmp_path / "modules")


def test_down_leaves_no_domain_and_no_daemon_it_started(lab: LabSite) -> None:
    """Last: take the shared lab down and look for anything left."""
    started = {d.name: d.pid() for d in libvirtd.daemons(lab.runtime) if d.pid() is not None}
    agent = Lab(lab.runtime).agent_pid()
    assert agent is not None
    assert len(qemu_processes(lab.prefix)) == 3, "the scan below must see the running guests"
    done = hostctl("lab", "down", "--runtime", lab.runtime)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for name in ("snp-1", "snp-2", "plain"):
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
