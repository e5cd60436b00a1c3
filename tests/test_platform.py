"""The kernel's side of SEV read under a root: kvm_amd's parameters (`Y`/`N`, as the kernel's module parameters
print booleans), `/dev/sev`, and SMT (`/sys/devices/system/cpu/smt/{control,active}`, Documentation/ABI of Linux)."""

from __future__ import annotations

from pathlib import Path

from hostctl.host.platform import read_platform


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_an_snp_host(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "sys/module/kvm_amd/parameters/sev": "Y\n",
            "sys/module/kvm_amd/parameters/sev_es": "Y\n",
            "sys/module/kvm_amd/parameters/sev_snp": "Y\n",
            "dev/sev": "",
            "sys/devices/system/cpu/smt/control": "on\n",
            "sys/devices/system/cpu/smt/active": "1\n",
        },
    )
    p = read_platform(root)
    assert p.kvm_amd_loaded and p.dev_sev and p.errors == {}
    assert [p.enabled(n) for n in ("sev", "sev_es", "sev_snp")] == [True, True, True]
    assert (p.smt_control, p.smt_active) == ("on", True)


def test_snp_off_and_a_strange_value(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "sys/module/kvm_amd/parameters/sev": "Y\n",
            "sys/module/kvm_amd/parameters/sev_es": "N\n",
            "sys/module/kvm_amd/parameters/sev_snp": "maybe\n",
            "sys/devices/system/cpu/smt/control": "forceoff\n",
            "sys/devices/system/cpu/smt/active": "0\n",
        },
    )
    p = read_platform(root)
    assert [p.enabled(n) for n in ("sev", "sev_es", "sev_snp")] == [True, False, None]
    assert "unexpected value 'maybe'" in p.errors[str(root / "sys/module/kvm_amd/parameters/sev_snp")]
    assert not p.dev_sev and (p.smt_control, p.smt_active) == ("forceoff", False)


def test_no_kvm_amd_is_unknown_not_off(tmp_path: Path) -> None:
    p = read_platform(tmp_path)
    assert not p.kvm_amd_loaded and p.enabled("sev_snp") is None
    assert "kvm_amd is not loaded" in p.errors[str(tmp_path / "sys/module/kvm_amd/parameters")]
    assert p.smt_control is None and p.errors[str(tmp_path / "sys/devices/system/cpu/smt/control")] == "absent"
