"""The lab guest: Debian's kernel and an initramfs of busybox-static and qemu-guest-agent, built once and cached.

The image is keyed by a hash of its inputs (kernel release, package versions, the init scripts), so it is rebuilt
only when one of them changes; `manifest.json` next to it names the packages and versions it was built from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hostctl.errors import HostctlError
from hostctl.lab.bounded import run, run_bytes

FORMAT = 1  # bump when the image's layout changes without any input changing

# Debian's kernel builds virtio as modules: loaded by /init in this order (each needs the ones before it).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_console",
)
AGENT_PORT = "org.qemu.guest_agent.0"

INIT = f"""#!/bin/busybox sh
# /init of a dittotui lab guest: Debian's kernel, busybox and qemu-guest-agent, nothing else.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(MODULES)}; do
    insmod /lib/modules/$m.ko || echo "lab-init: cannot load $m"
done
# Online a vCPU the host hot-adds, as a distribution's udev rule does.
uevent /sbin/hotadd-cpu &
mkdir -p /dev/virtio-ports
link_ports() {{
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        n=$(cat "$p/name")
        [ -n "$n" ] && ln -sf "../${{p##*/}}" "/dev/virtio-ports/$n"
    done
}}
# The guest agent, respawned if it dies (a test may kill it).
(
    while :; do
        link_ports
        [ -e /dev/virtio-ports/{AGENT_PORT} ] &&
            qemu-ga -m virtio-serial -p /dev/virtio-ports/{AGENT_PORT} -t /run -f /run/qemu-ga.pid
        sleep 1
    done
) &
echo "lab-init: ready"
# A shell on the serial console, for control when the agent is hung.
while :; do
    setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1
    sleep 1
done
"""

HOTADD = """#!/bin/sh
# Run by busybox uevent for every kernel event: online a hot-added vCPU.
if [ "$SUBSYSTEM" = cpu ] && [ "$ACTION" = add ] && [ -w "/sys$DEVPATH/online" ]; then
    echo 1 > "/sys$DEVPATH/online"
fi
exit 0
"""

TIMEOUT = 30.0  # per dpkg-query, ldd or cpio call


@dataclass
class Image:
    """A built guest: kernel, initramfs and the manifest naming what went in."""

    kernel: Path
    initrd: Path
    manifest: Path

    def packages(self) -> dict[str, str]:
        """Package name -> version, as recorded when the image was built."""
        data = json.loads(self.manifest.read_text())
        packages: dict[str, str] = data["packages"]
        return packages


@dataclass
class Inputs:
    """Everything an image is built from, read from this machine's Debian packages."""

    kernel: Path
    release: str
    modules: list[Path]
    busybox: Path
    agent: Path
    libraries: list[Path]
    packages: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        """A hash of the inputs: the same kernel, package versions and init scripts give the same image."""
        text = json.dumps(
            {
                "format": FORMAT,
                "release": self.release,
                "packages": self.packages,
                "modules": list(MODULES),
                "init": INIT,
                "hotadd": HOTADD,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache() -> Path:
    """Where built images are kept: the XDG cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dittotui" / "lab"


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> tuple[Path, str, list[Path]]:
    """The newest Debian kernel in `boot` whose virtio modules are installed: (vmlinuz, release, modules)."""
    kernels = sorted(boot.glob("vmlinuz-*"), key=lambda p: _version_key(p.name.removeprefix("vmlinuz-")))
    if not kernels:
        raise HostctlError(f"no kernel in {boot} (vmlinuz-*): install linux-image-amd64")
    problems = []
    for kernel in reversed(kernels):
        release = kernel.name.removeprefix("vmlinuz-")
        found, missing = [], []
        for name in MODULES:
            hits = sorted((modules / release / "kernel").rglob(f"{name}.ko"))
            if hits:
                found.append(hits[0])
            else:
                missing.append(name)
        if not missing:
            return kernel, release, found
        problems.append(f"{kernel.name} has no {', '.join(m + '.ko' for m in missing)} under {modules / release}")
    raise HostctlError(f"no kernel in {boot} with its virtio modules: {'; '.join(problems)}")


def _version_key(release: str) -> list[tuple[int, str]]:
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-+~]", release)]


def package_file(package: str, basename: str) -> Path:
    """The file called `basename` that Debian package `package` installed."""
    listing = run(
        ["dpkg-query", "-L", package],
        timeout=TIMEOUT,
        what=f"{package} is not installed (apt-get install {package}); dpkg-query -L {package}",
    )
    for line in listing.splitlines():
        path = Path(line.strip())
        if path.name == basename and path.is_file():
            return path
    raise HostctlError(f"package {package} has no file {basename}: reinstall {package}")


def libraries(binary: Path) -> list[Path]:
    """The shared libraries `ldd` lists for `binary` (the dynamic loader included), as ldd names them."""
    out = run(["ldd", str(binary)], timeout=TIMEOUT, what=f"ldd {binary}")
    libs = []
    for line in out.splitlines():
        if "not found" in line:
            raise HostctlError(f"ldd {binary}: a library is missing: {line.strip()}")
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            libs.append(Path(path))
    if not libs:
        raise HostctlError(f"ldd {binary} listed no libraries (is it a dynamic executable?)")
    return libs


def packages_of(paths: list[Path]) -> dict[str, str]:
    """The Debian packages that installed `paths` (each tried as named, then as resolved): name -> version."""
    owners: dict[Path, str] = {}
    for attempt in (lambda p: p, lambda p: Path(os.path.realpath(p))):
        wanted = {attempt(p): p for p in paths if p not in owners}
        if not wanted:
            break
        out = run(["dpkg-query", "-S", *map(str, wanted)], timeout=TIMEOUT, what="dpkg-query -S", check=False)
        for line in out.splitlines():
            package, sep, path = line.partition(": ")
            if sep and Path(path.strip()) in wanted:
                owners[wanted[Path(path.strip())]] = package.split(":")[0].strip()
    if orphans := [str(p) for p in paths if p not in owners]:
        raise HostctlError(f"{', '.join(orphans)}: not from any Debian package (the lab guest uses packages only)")
    names = sorted(set(owners.values()))
    out = run(["dpkg-query", "-W", "-f=${Package}\\t${Version}\\n", *names], timeout=TIMEOUT, what="dpkg-query -W")
    versions = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {name: versions.get(name, "unknown") for name in names}


def inputs(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Inputs:
    """Read what an image would be built from, naming the missing piece if there is one."""
    kernel, release, module_files = find_kernel(boot, modules)
    busybox = package_file("busybox-static", "busybox")
    agent = package_file("qemu-guest-agent", "qemu-ga")
    libs = libraries(agent)
    packages = packages_of([kernel, busybox, agent, *libs])
    return Inputs(kernel, release, module_files, busybox, agent, libs, packages)


def build(cache: Path | None = None, source: Inputs | None = None) -> tuple[Image, bool]:
    """The image for this machine's packages: from the cache, or built now. Returns (image, built_now)."""
    source = source or inputs()
    cache = cache or default_cache()
    target = cache / source.key()
    image = Image(target / "vmlinuz", target / "initrd.img", target / "manifest.json")
    if image.manifest.is_file() and image.initrd.is_file() and image.kernel.is_file():
        return image, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    except OSError as e:
        raise HostctlError(f"cannot use the lab cache {cache}: {e.strerror}") from None
    try:
        _build(source, work)
        try:
            work.rename(target)
        except OSError:
            if not image.manifest.is_file():  # not a concurrent build that won the race
                raise
    except OSError as e:
        raise HostctlError(f"cannot build the lab guest in {cache}: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image, True


def _build(source: Inputs, out: Path) -> None:
    root = out / "root"
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "var", "lib/modules", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var" / "run").symlink_to("../run")
    _install(source.busybox, root / "bin" / "busybox")
    _install(source.agent, root / "usr" / "sbin" / "qemu-ga")
    for lib in source.libraries:
        _install(lib, root / lib.relative_to("/"), mode=0o755)
    for module in source.modules:
        _install(module, root / "lib" / "modules" / module.name, mode=0o644)
    _write(root / "init", INIT)
    _write(root / "sbin" / "hotadd-cpu", HOTADD)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = run_bytes(
        ["cpio", "--create", "--format=newc", "--null", "--owner=0:0", "--quiet", "--directory", str(root)],
        timeout=TIMEOUT,
        what="cpio (packing the lab initramfs)",
        stdin=b"\0".join(n.encode() for n in [".", *names]) + b"\0",
    )
    (out / "initrd.img").write_bytes(gzip.compress(archive, mtime=0))
    shutil.copyfile(source.kernel, out / "vmlinuz")
    manifest = {
        "key": source.key(),
        "kernel": source.release,
        "packages": source.packages,
        "modules": [m.name for m in source.modules],
        "libraries": [str(lib) for lib in source.libraries],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(root)


def _install(source: Path, target: Path, mode: int = 0o755) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _write(target: Path, text: str) -> None:
    target.write_text(text)
    target.chmod(0o755)
