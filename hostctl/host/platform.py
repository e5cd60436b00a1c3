"""What the host's kernel says about AMD memory encryption: kvm_amd's parameters, `/dev/sev` and SMT.

Every path is read under `root` (`/` on a host), so tests point it at a directory of files recorded from real hosts.
A value that cannot be read is None, and `errors` says why; nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

KVM_AMD = "sys/module/kvm_amd/parameters"
SEV_PARAMETERS = ("sev", "sev_es", "sev_snp")
DEV_SEV = "dev/sev"
SMT_CONTROL = "sys/devices/system/cpu/smt/control"
SMT_ACTIVE = "sys/devices/system/cpu/smt/active"


@dataclass(frozen=True)
class Platform:
    """The kernel's side of SEV on one host, as read under `root`."""

    root: Path
    kvm_amd_loaded: bool
    kvm_amd: dict[str, bool | None] = field(default_factory=dict)  # sev, sev_es, sev_snp: on, off, or unreadable
    dev_sev: bool = False  # the SEV firmware device the kernel exposes to QEMU
    smt_control: str | None = None  # on, off, forceoff, notsupported, notimplemented
    smt_active: bool | None = None
    errors: dict[str, str] = field(default_factory=dict)  # path -> why it could not be read

    def enabled(self, parameter: str) -> bool | None:
        """Whether kvm_amd has `parameter` (sev, sev_es, sev_snp) on; None when unknown (see `errors`)."""
        return self.kvm_amd.get(parameter) if self.kvm_amd_loaded else None


def read_platform(root: Path = Path("/")) -> Platform:
    """Read kvm_amd's SEV parameters, `/dev/sev` and the SMT state under `root`."""
    errors: dict[str, str] = {}
    parameters = root / KVM_AMD
    loaded = parameters.is_dir()
    kvm_amd: dict[str, bool | None] = {}
    if loaded:
        for name in SEV_PARAMETERS:
            text = _read(parameters / name, errors)
            kvm_amd[name] = None if text is None else _flag(text, parameters / name, errors)
    else:
        errors[str(parameters)] = "kvm_amd is not loaded (not an AMD host, or KVM is off)"
    active = _read(root / SMT_ACTIVE, errors)
    return Platform(
        root=root,
        kvm_amd_loaded=loaded,
        kvm_amd=kvm_amd,
        dev_sev=(root / DEV_SEV).exists(),
        smt_control=_read(root / SMT_CONTROL, errors),
        smt_active=None if active is None else _flag(active, root / SMT_ACTIVE, errors),
        errors=errors,
    )


def _read(path: Path, errors: dict[str, str]) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        errors[str(path)] = "absent"
    except (OSError, UnicodeDecodeError) as e:
        errors[str(path)] = f"unreadable: {e}"
    return None


def _flag(text: str, path: Path, errors: dict[str, str]) -> bool | None:
    """A kernel boolean: `Y`/`N` (module parameters) or `1`/`0` (sysfs)."""
    if text in ("Y", "1"):
        return True
    if text in ("N", "0"):
        return False
    errors[str(path)] = f"unexpected value {text!r}"
    return None
