"""`hostctl doctor`: what one host needs to run elastic CVMs, checked one line at a time.

The kernel's side (kvm_amd's parameters, `/dev/sev`, SMT) is read under `root` (`hostctl.host.platform`); libvirt's
and QEMU's versions and their SEV/SNP support from libvirt (its domain capabilities); each CVM from its XML: its worker
driver against its security type and, for a guest-driver CVM, its guest-agent channel and whether the guest answers a
guest-ping. An agent adds its audit log, its elastic state and its socket.

A check fails only for what a CVM defined here needs: SNP off on a host with an SNP CVM fails, on a host without one it
is a warning. A host is emulated when libvirt's test driver serves it (the demo) or when its CVMs carry their SEV type
in hostctl's metadata only (the lab: real guests, no SEV); a check such a host does not need says "emulated".

Blocking: every libvirt call runs on a daemon thread with a bound (`examine` returns within `BOUND_S` of the wire),
so a hung libvirtd or guest costs that bound and never an answer.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from hostctl.errors import HostctlError
from hostctl.host.domxml import parse_domain
from hostctl.host.platform import Platform, read_platform
from hostctl.wire.doctor import Check, Report, Status
from hostctl.wire.security import SecurityType

T = TypeVar("T")

LIBVIRT_S = 8.0  # opening libvirt and reading the host and its domains
PING_MAX_S = 8  # a guest-ping waits at most this long (libvirt's bound), plus PING_MARGIN_S of ours
PING_MARGIN_S = 2.0
SNP_LIBVIRT = (10, 5, 0)  # the first libvirt with <launchSecurity type='sev-snp'>
GUEST_AGENT = "org.qemu.guest_agent.0"
SMT_ALLOWED = 1 << 16  # SNP guest policy: the guest may run on a host with SMT on
_RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
_SEV_FAMILY = (SecurityType.SEV, SecurityType.SEV_ES, SecurityType.SEV_SNP)
_ES_FAMILY = (SecurityType.SEV_ES, SecurityType.SEV_SNP)


@dataclass(frozen=True)
class AgentFiles:
    """What an agent writes and where it listens: its audit log, its elastic state, its socket (None: stdio)."""

    audit: Path
    state: Path
    socket: Path | None = None
    group: str | None = None


@dataclass(frozen=True)
class Domain:
    """A domain as the checks see it."""

    name: str
    running: bool
    security: SecurityType
    launch: bool  # its XML has <launchSecurity>: libvirt launches it with SEV (else the type is our metadata only)
    driver: str
    channel: bool  # a guest-agent channel in its XML
    policy: int


@dataclass(frozen=True)
class Hypervisor:
    """What libvirt says of the host."""

    driver: str  # libvirt's driver: QEMU, TEST, ...
    libvirt: tuple[int, int, int]
    version: tuple[int, int, int] | None  # the hypervisor's (QEMU's); None when the driver gives none
    caps: ET.Element | None  # domain capabilities; None when libvirt gives none
    caps_error: str = ""

    @property
    def test(self) -> bool:
        return self.driver.upper() == "TEST"


def examine(
    uri: str,
    *,
    name: str | None = None,
    root: Path = Path("/"),
    ping_s: float = 3.0,
    files: AgentFiles | None = None,
) -> Report:
    """Every check of the host at `uri` (blocking, bounded: call it on a thread)."""
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are reported here, not printed by libvirt
    remote = urlparse(uri).hostname or None
    agent_checks = agent_files(files)
    try:
        conn, hypervisor, domains = _within(LIBVIRT_S, lambda: _read(uri))
    except TimeoutError:
        failed = Check("libvirt", Status.FAIL, f"{uri}: no answer within {LIBVIRT_S:g} s", "is libvirtd running?")
        return Report(name or uri, [failed, *agent_checks])
    except (libvirt.libvirtError, HostctlError) as e:
        message = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
        failed = Check("libvirt", Status.FAIL, f"{uri}: {message}", "is libvirtd running, and may this user use it?")
        return Report(name or uri, [failed, *agent_checks])
    try:
        pings = ping_guests(domains, conn, min(PING_MAX_S, max(1, round(ping_s))))
        host = name or _hostname(conn, uri)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    platform = None if remote else read_platform(root)
    checks = host_checks(hypervisor, platform, domains, remote=remote)
    checks += [c for d in domains for c in cvm_checks(d, hypervisor, pings.get(d.name))]
    return Report(host, checks + agent_checks, emulated=emulated(hypervisor, domains))


def emulated(hypervisor: Hypervisor, domains: list[Domain]) -> str:
    """Why the host needs no SEV hardware, or "" when it does."""
    if hypervisor.test:
        return "libvirt's test driver (the demo site): no hypervisor, no SEV hardware; workers are emulated"
    if any(d.launch for d in domains if d.security.confidential):
        return ""
    named = [d.name for d in domains if d.security.confidential]
    if not named:
        return ""
    return (
        f"the SEV types of {', '.join(named)} are hostctl's metadata only (no <launchSecurity> in their XML): "
        "real guests without SEV, as on the lab site"
    )


def host_checks(
    hypervisor: Hypervisor, platform: Platform | None, domains: list[Domain], *, remote: str | None = None
) -> list[Check]:
    """The host's checks: libvirt, QEMU, SEV and SNP in libvirt, kvm_amd's parameters, `/dev/sev`, SMT."""
    judge = _Judge([] if hypervisor.test else domains, emulated(hypervisor, domains))  # the test driver needs nothing
    checks = [_libvirt(hypervisor), _qemu(hypervisor, judge), *_sev(hypervisor, judge)]
    if platform is None:
        where = f"the agent runs on another machine than the hypervisor ({remote})"
        return [*checks, Check("kernel", Status.NA, f"{where}: its kvm_amd, /dev/sev and SMT are not read from here")]
    for parameter, needed_by in (("sev", _SEV_FAMILY), ("sev_es", _ES_FAMILY), ("sev_snp", (SecurityType.SEV_SNP,))):
        value = platform.enabled(parameter)
        parameters = platform.root / "sys/module/kvm_amd/parameters"
        if value is not None:
            found = f"{parameter}={'Y' if value else 'N'}"
        elif not platform.kvm_amd_loaded:
            found = f"unknown ({platform.errors.get(str(parameters), 'kvm_amd is not loaded')})"
        else:
            found = _unknown(platform, str(parameters / parameter))
        checks.append(
            judge(
                f"kvm_amd {parameter}",
                value is True,
                found,
                needed_by,
                f"load kvm_amd with {parameter}=1 (e.g. options kvm_amd {parameter}=1 in /etc/modprobe.d) and "
                "enable SEV in the firmware",
            )
        )
    dev = str(platform.root / "dev/sev")
    checks.append(
        judge(
            "/dev/sev",
            platform.dev_sev,
            "present" if platform.dev_sev else f"{dev} absent",
            _SEV_FAMILY,
            "load ccp (the AMD secure processor driver) so the kernel exposes /dev/sev to QEMU",
        )
    )
    checks.append(_smt(platform, domains, judge))
    return checks


def cvm_checks(domain: Domain, hypervisor: Hypervisor, ping: str | None) -> list[Check]:
    """A CVM's worker driver against its security type; for a guest-driver CVM its guest agent."""
    checks = [_driver(domain, hypervisor)]
    if domain.driver != "guest":
        return checks
    name = f"{domain.name} guest agent"
    if not domain.channel:
        checks.append(
            Check(
                name,
                Status.FAIL,
                f"no guest-agent channel ({GUEST_AGENT}) in its XML: its worker count can be neither read nor set",
                f"add <channel type='unix'><target type='virtio' name='{GUEST_AGENT}'/></channel> and run "
                "qemu-guest-agent in the guest",
            )
        )
    elif not domain.running:
        checks.append(Check(name, Status.NA, "not running: not asked"))
    elif ping is None:
        checks.append(Check(name, Status.OK, "answers (guest-ping)"))
    else:
        checks.append(
            Check(name, Status.FAIL, ping, "start qemu-guest-agent in the guest; until it answers, it is not scaled")
        )
    return checks


def agent_files(files: AgentFiles | None) -> list[Check]:
    """The agent's audit log and elastic state writable; its socket's mode and group as it was told."""
    if files is None:
        return [Check("agent", Status.NA, "no agent: run through one (hostctl --site FILE doctor) for its files")]
    return [_audit(files.audit), _state(files.state), _socket(files.socket, files.group)]


def ping_guests(domains: list[Domain], conn: libvirt.virConnect, seconds: int) -> dict[str, str | None]:
    """guest-ping every running guest-driver CVM with a channel, all at once: name -> None (answered) or why not.
    libvirt gives up after `seconds`; a call libvirt holds longer (its job lock) is left behind after a margin."""
    asked = [d.name for d in domains if d.driver == "guest" and d.running and d.channel]
    answers: dict[str, str | None] = {}
    threads = {name: threading.Thread(target=_ping, args=(conn, name, seconds, answers), daemon=True) for name in asked}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + seconds + PING_MARGIN_S
    for name, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if name not in answers:
            answers[name] = f"no answer to guest-ping within {seconds + PING_MARGIN_S:g} s"
    return dict(answers)


def _ping(conn: libvirt.virConnect, name: str, seconds: int, answers: dict[str, str | None]) -> None:
    try:
        libvirt_qemu.qemuAgentCommand(conn.lookupByName(name), '{"execute":"guest-ping"}', seconds, 0)
    except libvirt.libvirtError as e:
        answers.setdefault(name, f"guest-ping failed: {e.get_error_message()}")
    else:
        answers.setdefault(name, None)


# -- reading ----------------------------------------------------------------------------------------------------


def _read(uri: str) -> tuple[libvirt.virConnect, Hypervisor, list[Domain]]:
    conn = libvirt.open(uri)
    try:
        return (
            conn,
            _hypervisor(conn),
            [read_domain(d.XMLDesc(0), running=d.state()[0] in _RUNNING) for d in conn.listAllDomains()],
        )
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        raise


def _hypervisor(conn: libvirt.virConnect) -> Hypervisor:
    driver = str(conn.getType())
    version: tuple[int, int, int] | None = None
    with contextlib.suppress(libvirt.libvirtError):
        version = _version(conn.getVersion()) if driver.upper() == "QEMU" else None
    try:
        return Hypervisor(driver, _version(conn.getLibVersion()), version, ET.fromstring(conn.getDomainCapabilities()))
    except libvirt.libvirtError as e:
        return Hypervisor(driver, _version(conn.getLibVersion()), version, None, e.get_error_message())


def read_domain(xml: str, *, running: bool) -> Domain:
    """A domain's XML as the checks see it."""
    facts = parse_domain(xml)
    root = ET.fromstring(xml)
    # The driver LibvirtHost gives a domain that names none.
    driver = facts.driver or ("guest" if facts.guest_agent or facts.security.confidential else "hotplug")
    return Domain(
        name=root.findtext("name") or "?",
        running=running,
        security=facts.security,
        launch=root.find("launchSecurity") is not None,
        driver=driver,
        channel=facts.guest_agent,
        policy=facts.policy,
    )


def _hostname(conn: libvirt.virConnect, uri: str) -> str:
    try:
        return str(conn.getHostname())
    except libvirt.libvirtError:
        return uri


def _version(number: int) -> tuple[int, int, int]:
    return number // 1_000_000, number // 1000 % 1000, number % 1000


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _within(seconds: float, fn: Callable[[], T]) -> T:
    """`fn()` on a daemon thread; TimeoutError when it has not returned within `seconds` (it is left to end)."""
    outcome: list[tuple[T | None, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((fn(), None))
        except BaseException as e:  # handed to the caller as it is
            outcome.append((None, e))

    thread = threading.Thread(target=run, name="doctor", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError
    result, error = outcome[0]
    if error is not None:
        raise error
    return result  # type: ignore[return-value]  # fn returned a T


# -- judging ----------------------------------------------------------------------------------------------------


class _Judge:
    """A check of something CVMs may need: FAIL when one defined here needs it, else EMULATED on an emulated host,
    else WARN (nothing needs it yet, but such a CVM could not launch)."""

    def __init__(self, domains: list[Domain], emulated: str) -> None:
        self.domains = domains
        self.emulated = emulated

    def needing(self, types: tuple[SecurityType, ...]) -> list[str]:
        """The CVMs libvirt launches with one of `types`."""
        return [d.name for d in self.domains if d.launch and d.security in types]

    def __call__(self, name: str, good: bool, found: str, types: tuple[SecurityType, ...], advice: str) -> Check:
        if good:
            return Check(name, Status.OK, found)
        if needing := self.needing(types):
            return Check(name, Status.FAIL, f"{found}; needed by {', '.join(needing)}", advice)
        if self.emulated:
            return Check(name, Status.EMULATED, found)
        kinds = "/".join(t.value for t in types)
        return Check(name, Status.WARN, f"{found}; no {kinds} CVM is defined here, none could launch", advice)


def _libvirt(hypervisor: Hypervisor) -> Check:
    return Check("libvirt", Status.OK, f"{_dotted(hypervisor.libvirt)} ({hypervisor.driver} driver)")


def _qemu(hypervisor: Hypervisor, judge: _Judge) -> Check:
    if hypervisor.test:
        return Check("QEMU", Status.EMULATED, "none: libvirt's test driver")
    version = "version unknown" if hypervisor.version is None else _dotted(hypervisor.version)
    if hypervisor.caps is None:
        return judge(
            "QEMU",
            False,
            f"{version}; no domain capabilities ({hypervisor.caps_error})",
            _SEV_FAMILY,
            "check that libvirt finds a QEMU binary (virsh domcapabilities)",
        )
    kind = hypervisor.caps.findtext("domain") or "?"
    return judge(
        "QEMU",
        kind == "kvm",
        f"{version}, {'KVM' if kind == 'kvm' else f'no KVM (domain type {kind}: TCG)'}",
        _SEV_FAMILY,
        "enable virtualization (SVM) in the firmware and load kvm_amd",
    )


def _sev(hypervisor: Hypervisor, judge: _Judge) -> list[Check]:
    """SEV and SEV-ES guests as libvirt's domain capabilities offer them (`<sev>`, libvirt 8.0+ with its ASID
    counts), and SEV-SNP (`<launchSecurity>`'s sectype `sev-snp`, libvirt 10.5+ with a QEMU that has it)."""
    caps = hypervisor.caps
    sev = caps.find("features/sev") if caps is not None else None
    supported = sev is not None and sev.get("supported") == "yes"
    found = "not offered by libvirt" + (f" ({hypervisor.caps_error})" if caps is None else "")
    es_found, es_good = found, False
    if sev is not None and supported:
        guests, es_guests = sev.findtext("maxGuests"), sev.findtext("maxESGuests")
        found = f"offered; {guests or '?'} SEV guests at most" if guests else "offered (guest limit not reported)"
        es_good = es_guests is not None and es_guests.strip() not in ("", "0")
        es_found = (
            f"{es_guests} SEV-ES/SNP guests at most (maxESGuests)"
            if es_guests is not None
            else "libvirt does not report maxESGuests (libvirt before 8.0)"
        )
    advice = "enable SEV in the firmware and kvm_amd, then restart libvirtd (it probes QEMU at start)"
    snp_types = (
        {v.text for v in caps.findall("features/launchSecurity/enum[@name='sectype']/value")}
        if caps is not None
        else set()
    )
    if hypervisor.libvirt < SNP_LIBVIRT:
        snp_found = f"libvirt {_dotted(hypervisor.libvirt)} has no <launchSecurity type='sev-snp'> (needs 10.5)"
    elif "sev-snp" in snp_types:
        snp_found = "offered (domain capabilities list sectype sev-snp)"
    else:
        snp_found = "not offered: QEMU has no sev-snp-guest (QEMU 9.1+), or SNP is off in the firmware or kvm_amd"
    return [
        judge("SEV", supported, found, _SEV_FAMILY, advice),
        judge("SEV-ES", supported and es_good, es_found, _ES_FAMILY, advice),
        judge(
            "SEV-SNP",
            hypervisor.libvirt >= SNP_LIBVIRT and "sev-snp" in snp_types,
            snp_found,
            (SecurityType.SEV_SNP,),
            "run libvirt 10.5+ and QEMU 9.1+ on a kernel with kvm_amd sev_snp=1",
        ),
    ]


def _smt(platform: Platform, domains: list[Domain], judge: _Judge) -> Check:
    """SNP firmware refuses to launch a guest whose policy forbids SMT while SMT is on."""
    active = platform.smt_active
    state = {True: "on", False: "off"}.get(active) if active is not None else None
    path = str(platform.root / "sys/devices/system/cpu/smt/active")
    found = f"SMT {state} (control {platform.smt_control or '?'})" if state else f"SMT {_unknown(platform, path)}"
    forbid = [d.name for d in domains if d.security is SecurityType.SEV_SNP and not d.policy & SMT_ALLOWED]
    if not forbid:
        return Check("SMT", Status.OK, f"{found}; no SNP CVM forbids SMT")
    found = f"{found}; the policy of {', '.join(forbid)} forbids SMT"
    if active is False:
        return Check("SMT", Status.OK, found)
    advice = "turn SMT off (echo off > /sys/devices/system/cpu/smt/control) or allow SMT in the policy (bit 16)"
    if judge.needing((SecurityType.SEV_SNP,)):
        return Check("SMT", Status.FAIL, f"{found}: the firmware refuses to launch them", advice)
    if judge.emulated:
        return Check("SMT", Status.EMULATED, found)
    return Check("SMT", Status.WARN, found, advice)


def _unknown(platform: Platform, path: str) -> str:
    return f"unknown ({platform.errors.get(path, 'not read')})"


def _driver(domain: Domain, hypervisor: Hypervisor) -> Check:
    name = f"{domain.name} driver"
    kind = domain.security.value
    if domain.driver == "guest":
        return Check(name, Status.OK, f"guest on {kind}: the guest onlines its workers, no hotplug")
    if domain.driver in ("hotplug", "emulated") and domain.security.measures_vcpus:
        if domain.driver == "emulated" and hypervisor.test:
            return Check(name, Status.EMULATED, f"emulated workers on {kind} (libvirt's test driver)")
        return Check(
            name,
            Status.FAIL,
            f"{domain.driver} on {kind}: the launch measurement covers every vCPU, so vCPUs cannot be added after "
            "launch (hostctl refuses to scale it)",
            "name the guest driver in its metadata: <ditto:workers driver='guest'/>",
        )
    if domain.driver == "emulated":
        if hypervisor.test:
            return Check(name, Status.EMULATED, f"emulated workers on {kind} (libvirt's test driver)")
        return Check(
            name,
            Status.WARN,
            f"emulated on {kind} under {hypervisor.driver}: the demo's driver hotplugs vCPUs after a delay",
            "name the guest (or, for a plain VM, hotplug) driver in its metadata",
        )
    if domain.driver == "hotplug":
        return Check(name, Status.OK, f"hotplug on {kind}: vCPUs are plugged live")
    return Check(
        name,
        Status.FAIL,
        f"unknown worker driver {domain.driver!r}: hostctl cannot count or scale it",
        "name guest, hotplug or emulated in its <ditto:workers driver=...>",
    )


# -- the agent's files ------------------------------------------------------------------------------------------


def _audit(path: Path) -> Check:
    try:
        with path.open("ab"):  # appends nothing: only whether it could
            pass
    except OSError as e:
        return Check(
            "audit log",
            Status.FAIL,
            f"{path}: cannot append ({e.strerror or e})",
            "give the agent's user write access to it and its directory, or pass --audit PATH",
        )
    return Check("audit log", Status.OK, f"{path}: writable")


def _state(path: Path) -> Check:
    """The elastic state is replaced whole (a new file renamed over it), so its directory must take new files."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return Check(
            "elastic state",
            Status.FAIL,
            f"{path.parent}: cannot create files ({e.strerror or e}): policy choices would not survive a restart",
            "give the agent's user write access to the audit log's directory (the state lives beside it)",
        )
    return Check("elastic state", Status.OK, f"{path}: its directory is writable")


def _socket(path: Path | None, group: str | None) -> Check:
    if path is None:
        return Check("socket", Status.NA, "serving one peer on stdin/stdout (over SSH): no socket")
    try:
        st = path.stat()
    except OSError as e:
        return Check("socket", Status.FAIL, f"{path}: {e.strerror or e}", "restart the agent: it creates its socket")
    mode = stat.S_IMODE(st.st_mode)
    found = f"{path}: {stat.filemode(st.st_mode)} {_user(st.st_uid)}:{_group(st.st_gid)}"
    want_mode = 0o660 if group is not None else 0o600
    wanted = f"mode {want_mode:04o}" + (f", group {group}" if group is not None else ", owner only")
    gid_ok = group is None or _gid(group) == st.st_gid
    if not stat.S_ISSOCK(st.st_mode):
        return Check("socket", Status.FAIL, f"{found}: not a socket", "restart the agent: it creates its socket")
    if mode != want_mode or not gid_ok:
        return Check(
            "socket",
            Status.FAIL,
            f"{found}; expected {wanted} (--group {group or 'not given'})",
            f"restart the agent (it sets {wanted}) or chmod/chgrp the socket",
        )
    return Check("socket", Status.OK, f"{found} ({wanted})")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None
