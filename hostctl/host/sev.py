"""libvirt's side of SEV: what the hypervisor supports and how many guests the firmware allows (domain capabilities,
node SEV info), and what a running CVM launched with (its `<launchSecurity>` and libvirt's launch security info).

Pure parsers of what libvirt returns, so each is tested on libvirt's documented XML and parameter names; the calls
themselves are made by `LibvirtHost` on its worker threads. A value libvirt does not give is None with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hostctl.host.platform import KVM_AMD, SMT_ACTIVE, Platform
from hostctl.wire.model import CVM, DomainState, HostSEV, Launch
from hostctl.wire.security import SecurityType

# virNodeGetSEVInfo's parameters (VIR_NODE_SEV_MAX_GUESTS, VIR_NODE_SEV_MAX_ES_GUESTS; libvirt 8.0+).
NODE_MAX_GUESTS = "max-guests"
NODE_MAX_ES_GUESTS = "max-es-guests"
# virDomainGetLaunchSecurityInfo's parameters (VIR_DOMAIN_LAUNCH_SECURITY_SEV_*).
LAUNCH_MEASUREMENT = "sev-measurement"
LAUNCH_API_MAJOR = "sev-api-major"
LAUNCH_API_MINOR = "sev-api-minor"
LAUNCH_BUILD_ID = "sev-build-id"


@dataclass
class Support:
    """What libvirt's domain capabilities say of SEV on this host."""

    sev: bool | None = None
    sev_es: bool | None = None
    sev_snp: bool | None = None
    max_guests: int | None = None
    max_es_guests: int | None = None
    why: dict[str, str] = field(default_factory=dict)


def parse_domain_capabilities(xml: str) -> Support:
    """SEV support and guest limits from `virConnectGetDomainCapabilities`' `<features><sev>` (maxGuests and
    maxESGuests since libvirt 8.0) and `<launchSecurity>`'s `sectype` enum (which lists `sev-snp` where libvirt and
    QEMU can launch SNP guests). SEV-ES and SNP guests need an ES ASID: maxESGuests > 0 says they can run."""
    support = Support()
    features = ET.fromstring(xml).find("features")
    sev = None if features is None else features.find("sev")
    if features is None or sev is None:
        for name in ("sev", "sev_es", "sev_snp", "max_guests", "max_es_guests"):
            support.why[name] = "libvirt's domain capabilities have no <sev> element"
        return support
    support.sev = sev.get("supported") == "yes"
    if not support.sev:
        support.sev_es = support.sev_snp = False
        support.max_guests = support.max_es_guests = 0
        return support
    for name, tag in (("max_guests", "maxGuests"), ("max_es_guests", "maxESGuests")):
        text = sev.findtext(tag)
        if text is None:
            support.why[name] = f"libvirt's domain capabilities give no {tag} (libvirt before 8.0)"
        elif not text.strip().isdigit():
            support.why[name] = f"libvirt's domain capabilities give {tag} {text!r}, not a count"
        else:
            setattr(support, name, int(text))
    if support.max_es_guests is None:
        support.why["sev_es"] = support.why["max_es_guests"]
    else:
        support.sev_es = support.max_es_guests > 0
    launch = features.find("launchSecurity")
    types = {v.text for v in features.findall("launchSecurity/enum[@name='sectype']/value")}
    if support.sev_es is False:
        support.sev_snp = False  # no ES ASID: no SNP guest either
    elif launch is None:
        support.why["sev_snp"] = "libvirt's domain capabilities list no launch security types"
    else:
        support.sev_snp = "sev-snp" in types
    return support


def node_limits(params: Mapping[str, Any], support: Support) -> None:
    """Fill the guest limits the domain capabilities left out from `virNodeGetSEVInfo`'s parameters."""
    for name, key in (("max_guests", NODE_MAX_GUESTS), ("max_es_guests", NODE_MAX_ES_GUESTS)):
        if getattr(support, name) is None and isinstance(params.get(key), int):
            setattr(support, name, params[key])
            support.why.pop(name, None)
    if support.sev_es is None and support.max_es_guests is not None:
        support.sev_es = support.max_es_guests > 0
        support.why.pop("sev_es", None)


def host_facts(support: Support, platform: Platform | None, platform_why: str = "") -> HostSEV:
    """The host's SEV facts from libvirt's support and the kernel's platform (None: not readable, `platform_why`)."""
    facts = HostSEV(max_guests=support.max_guests, max_es_guests=support.max_es_guests)
    facts.why.update(support.why)  # sev, sev_es, sev_snp: libvirt's support (the host's own fields)
    kernel = {"sev_enabled": "sev", "sev_es_enabled": "sev_es", "sev_snp_enabled": "sev_snp"}
    if platform is None:
        for name in (*kernel, "dev_sev", "smt"):
            facts.why[name] = platform_why
        return facts
    for name, parameter in kernel.items():
        value = platform.enabled(parameter)
        setattr(facts, name, value)
        if value is None:
            parameters = platform.root / KVM_AMD
            facts.why[name] = platform.errors.get(str(parameters / parameter)) or platform.errors[str(parameters)]
    facts.dev_sev = platform.dev_sev
    facts.smt = platform.smt_active
    if facts.smt is None:
        facts.why["smt"] = platform.errors[str(platform.root / SMT_ACTIVE)]
    return facts


def count_guests(facts: HostSEV, cvms: list[CVM]) -> HostSEV:
    """A copy of `facts` with the ASIDs in use counted from the running CVMs by type, and the firmware version from
    the first running CVM whose launch info gives it."""
    facts = msgspec.structs.replace(facts, why=dict(facts.why))
    running = [c for c in cvms if c.state is DomainState.RUNNING and c.security.confidential]
    facts.es_guests = sum(1 for c in running if c.security.es_asid)
    facts.sev_guests = len(running) - facts.es_guests
    if facts.emulated:
        return facts
    source = next((c for c in running if c.launch is not None and c.launch.api_version is not None), None)
    if source is not None and source.launch is not None:
        build = "" if source.launch.build_id is None else f" build {source.launch.build_id}"
        facts.firmware = f"{source.launch.api_version}{build}"
        facts.firmware_from = f"libvirt's launch security info of {source.name}"
        facts.why.pop("firmware", None)
    else:
        facts.firmware, facts.firmware_from = None, ""
        facts.why["firmware"] = (
            "libvirt gives the firmware version only in a running SEV or SEV-ES CVM's launch security info, "
            + ("and none gave it" if running else "and none is running")
        )
    return facts


def parse_launch_xml(launch: ET.Element, security: SecurityType) -> Launch:
    """The launch facts a domain's `<launchSecurity>` holds (libvirt's formatdomain "Launch Security": for
    `sev-snp` since libvirt 10.5 `kernelHashes` and `authorKey` attributes, `idBlock`, `idAuth`, `hostData`)."""
    facts = Launch(kernel_hashes=launch.get("kernelHashes") == "yes")  # libvirt's default: no
    if security is not SecurityType.SEV_SNP:
        return facts
    host_data = (launch.findtext("hostData") or "").strip()
    facts.host_data = host_data or None
    if not host_data:
        facts.why["host_data"] = "none given in its <launchSecurity>"
    facts.id_block = bool((launch.findtext("idBlock") or "").strip())
    facts.id_auth = bool((launch.findtext("idAuth") or "").strip())
    facts.author_key = launch.get("authorKey") == "yes"
    return facts


def add_launch_info(facts: Launch, params: Mapping[str, Any] | None, why: str = "") -> Launch:
    """Add what `virDomainGetLaunchSecurityInfo` gave (`params`; None when the call failed, with `why`)."""
    if params is None:
        facts.why["measurement"] = facts.why["api_version"] = why
        return facts
    measurement = params.get(LAUNCH_MEASUREMENT)
    facts.measurement = measurement if isinstance(measurement, str) and measurement else None
    if facts.measurement is None:
        facts.why["measurement"] = "libvirt gives none for this CVM (an SNP guest's is in its attestation report)"
    major, minor = params.get(LAUNCH_API_MAJOR), params.get(LAUNCH_API_MINOR)
    if isinstance(major, int) and isinstance(minor, int):
        facts.api_version = f"{major}.{minor}"
        build = params.get(LAUNCH_BUILD_ID)
        facts.build_id = build if isinstance(build, int) else None
    else:
        facts.why["api_version"] = "libvirt's launch security info gives no firmware API version for this CVM"
    return facts
