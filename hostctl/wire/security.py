"""AMD SEV launch-security types and their guest policy bits, decoded into named flags, the risky ones marked."""

from __future__ import annotations

import functools
from enum import StrEnum


class SecurityType(StrEnum):
    """How a VM's memory and vCPU state are protected from the host."""

    NONE = "none"
    SEV = "sev"
    SEV_ES = "sev-es"
    SEV_SNP = "sev-snp"

    @property
    def confidential(self) -> bool:
        return self is not SecurityType.NONE

    @property
    def measures_vcpus(self) -> bool:
        """True when the launch measurement covers every vCPU's register state (VMSA)."""
        return self in (SecurityType.SEV_ES, SecurityType.SEV_SNP)

    @property
    def es_asid(self) -> bool:
        """True when the guest takes one of the host's SEV-ES/SNP ASIDs (a plain SEV guest takes an SEV one)."""
        return self.measures_vcpus


# SEV / SEV-ES guest policy (AMD SEV API 0.24, "Guest Policy"): bit -> flag name. Bits 16-23 and 24-31 hold the
# lowest firmware API version (major, minor) the guest may run on.
SEV_POLICY_BITS: dict[int, str] = {
    0: "no-debug",
    1: "no-key-sharing",
    2: "es-required",
    3: "no-send",
    4: "domain",
    5: "sev-only",
}
SEV_API_BITS = range(16, 32)

# SEV-SNP guest policy (SEV-SNP ABI 1.58, "Guest Policy"): bit -> flag name. Bits 0-15 hold the lowest ABI version.
SNP_POLICY_BITS: dict[int, str] = {
    16: "smt-allowed",
    17: "reserved-1",  # must be one
    18: "migrate-ma",
    19: "debug-allowed",
    20: "single-socket",
    21: "cxl-allowed",
    22: "mem-aes-256-xts",
    23: "rapl-disabled",
    24: "ciphertext-hiding",
    25: "page-swap-disable",
}

SNP_DEFAULT_POLICY = 0x30000
SNP_SMT_ALLOWED = 1 << 16

# Flags that weaken what the guest owner is promised, and why.
RISKY: dict[str, str] = {
    "debug-allowed": "the host may decrypt and change guest memory and registers through the firmware",
    "migrate-ma": "a migration agent may be bound to the guest and export its memory",
    "debug": "the host may decrypt guest memory through the firmware (no-debug is not set)",
    "key-sharing": "another guest may share this guest's memory key (no-key-sharing is not set)",
}


@functools.lru_cache(maxsize=1024)
def _decode(security: SecurityType, policy: int) -> tuple[str, ...]:
    if security is SecurityType.NONE:
        return ()
    if security is SecurityType.SEV_SNP:
        flags = [SNP_POLICY_BITS.get(bit, f"bit-{bit}") for bit in range(16, 64) if policy >> bit & 1]
        major, minor = policy >> 8 & 0xFF, policy & 0xFF
        if major or minor:
            flags.insert(0, f"abi>={major}.{minor}")
        return tuple(flags)
    flags = [
        SEV_POLICY_BITS.get(bit, f"bit-{bit}") for bit in range(64) if policy >> bit & 1 and bit not in SEV_API_BITS
    ]
    major, minor = policy >> 16 & 0xFF, policy >> 24 & 0xFF
    if major or minor:
        flags.append(f"api>={major}.{minor}")
    return tuple(flags)


def decode_policy(security: SecurityType, policy: int) -> list[str]:
    """Name the flags set in `policy` for this security type (unknown bits as `bit-N`)."""
    return list(_decode(security, policy))


def risky_flags(security: SecurityType, policy: int) -> dict[str, str]:
    """The policy's risky permissions and why each is one: for SNP the bits that grant them (debug, migration
    agent); for SEV and SEV-ES the protective bits left clear (no-debug, no-key-sharing)."""
    if security is SecurityType.SEV_SNP:
        return {flag: RISKY[flag] for flag in _decode(security, policy) if flag in RISKY}
    if security is SecurityType.NONE:
        return {}
    flags = _decode(security, policy)
    return {name: RISKY[name] for name in ("debug", "key-sharing") if f"no-{name}" not in flags}


def smt_allowed(security: SecurityType, policy: int) -> bool | None:
    """Whether the policy lets the guest run while the host has SMT on; None where the policy has no say (SEV)."""
    return bool(policy & SNP_SMT_ALLOWED) if security is SecurityType.SEV_SNP else None
