"""The lab site against the guest's own view: what a guest says (`guest-get-vcpus`, asked with virsh and a timeout)
is the truth these tests hold hostctl to, not hostctl's model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hostctl.errors import HostctlError
from hostctl.lab import guest
from hostctl.lab.launcher import HOST
from tests.support.lab import GuestView, LabSite, guest_view, hostctl, libvirt_live_vcpus


def scale(lab: LabSite, cvm: str, target: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return hostctl("--site", lab.site, "scale", f"{HOST}/{lab.cvm(cvm)}", str(target), *extra)


def test_up_boots_every_guest_and_its_agent(lab: LabSite) -> None:
    for name in ("snp-1", "snp-2", "plain"):
        assert f"{lab.cvm(name)}: guest agent answered after" in lab.up
    assert "host agent: started" in lab.up
    assert lab.site.is_file()
    # Guest-driver CVMs have every vCPU present from launch and boot with one online; the hotplug VM has one.
    assert lab.booted == {
        "snp-1": GuestView(present=4, online=1),
        "snp-2": GuestView(present=4, online=1),
        "plain": GuestView(present=1, online=1),
    }


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
    start = guest_view(cvm).online
    if start != 1:  # another test left it elsewhere: start from one online
        assert scale(lab, "snp-1", 1, "--expect", str(start)).returncode == 0
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


def test_a_second_lab_never_takes_over_the_first_ones_guests(lab: LabSite) -> None:
    runtime = Path(tempfile.gettempdir()) / f"dittotui-lab-second-{os.getpid()}"
    done = hostctl("lab", "up", "--runtime", runtime, "--prefix", lab.prefix)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"hostctl: domains with prefix {lab.prefix!r} already exist (") and "another lab's" in line
    assert not runtime.exists()
    assert guest_view(lab.cvm("snp-1")).present == 4  # the first lab's guests still answer


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
