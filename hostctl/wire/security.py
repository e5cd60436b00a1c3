"""AMD SEV launch-security types and their guest policy bits, decoded into named flags."""

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


# SEV / SEV-ES guest policy (AMD SEV API, "Guest Policy"): bit -> flag name.
SEV_POLICY_BITS: dict[int, str] = {
    0: "no-debug",
    1: "no-key-sharing",
    2: "es-required",
    3: "no-send",
    4: "domain",
    5: "sev-only",
}

# SEV-SNP guest policy (SNP ABI, "Guest Policy"): bit -> flag name. Bits 0-15 hold the ABI version.
SNP_POLICY_BITS: dict[int, str] = {
    16: "smt-allowed",
    17: "reserved-1",
    18: "migrate-ma",
    19: "debug-allowed",
    20: "single-socket",
    21: "cxl-allowed",
    22: "mem-aes-256-xts",
    23: "rapl-disabled",
    24: "ciphertext-hiding",
}

SNP_DEFAULT_POLICY = 0x30000


@functools.lru_cache(maxsize=1024)
def _decode(security: SecurityType, policy: int) -> tuple[str, ...]:
    if security is SecurityType.NONE:
        return ()
    names = SNP_POLICY_BITS if security is SecurityType.SEV_SNP else SEV_POLICY_BITS
    first = 16 if security is SecurityType.SEV_SNP else 0
    flags = [names.get(bit, f"bit-{bit}") for bit in range(first, 64) if policy >> bit & 1]
    if security is SecurityType.SEV_SNP:
        major, minor = policy >> 8 & 0xFF, policy & 0xFF
        if major or minor:
            flags.insert(0, f"abi>={major}.{minor}")
    return tuple(flags)


def decode_policy(security: SecurityType, policy: int) -> list[str]:
    """Name the flags set in `policy` for this security type (unknown bits as `bit-N`)."""
    return list(_decode(security, policy))
