"""Malformed demo site files give one clear line naming the file, the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostctl import data
from hostctl.demo import config
from hostctl.errors import ConfigError

BASE = data.DEMO_CONFIG.read_text()


def load_text(tmp_path: Path, text: str) -> config.DemoConfig:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return config.load(path)


def test_shipped_demo_site_loads() -> None:
    site = config.load()
    assert [h.role for h in site.hosts] == ["mec", "mec", "regional"]
    for host in site.hosts:
        assert {c.security.value for c in host.cvms} >= {"sev-snp", "none"}
        assert any(c.security.value in ("sev", "sev-es") for c in host.cvms)
    assert [e.weight for e in site.endpoints] == [0.6, 0.3, 0.1]
    assert 1.3 <= site.overhead.sev_snp <= 1.6 and 1.0 < site.overhead.sev < site.overhead.sev_snp


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("jitter = 0.2", "jitter = 0.2 0.3"), r"site\.toml: TOML syntax error"),
        (("jitter = 0.2", 'jitter = "lots"'), r"site\.toml: jitter: expected a number, got 'lots'"),
        (("jitter = 0.2", "jitter = 2.0"), r"site\.toml: jitter: 2\.0 must be in \[0, 1\)"),
        (("jitter = 0.2", "jiter = 0.2"), r"site\.toml: jiter: unknown key \(known: .*jitter"),
        (
            ('security = "sev-es"', 'security = "sgx"'),
            r"hosts\[0\]\.cvms\[2\]\.security: 'sgx' is not one of none, sev, sev-es, sev-snp",
        ),
        (("cpus = 16", 'cpus = "16"'), r"hosts\[0\]\.cpus: expected an integer, got '16'"),
        (("max_vcpus = 9", "max_vcpus = 0"), r"hosts\[0\]\.cvms\[0\]\.max_vcpus: 0 must be > 0"),
        (("online_vcpus = 4", "online_vcpus = 40"), r"online_vcpus 40 is outside boot\.\.max \(2\.\.18\)"),
        (
            ('name = "social-sev"', 'name = "social-snp"'),
            r"hosts\[0\]: host 'mec-1': cvm name 'social-snp' appears twice",
        ),
        (("service_ms = 9.0", "service_ms = -9.0"), r"endpoints\[2\]\.service_ms: -9\.0 must be > 0"),
        (("[traffic]", "[trafic]"), r"trafic: unknown key"),
        (
            ('path = "/wrk2-api/post/compose"', 'path = "wrk2-api/post/compose"'),
            r"endpoints\[2\]\.path: .* must start with '/'",
        ),
    ],
)
def test_bad_values_name_file_field_and_value(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in BASE
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, BASE.replace(old, new, 1))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        config.load(tmp_path / "nope.toml")


def test_a_site_without_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one \\[\\[hosts\\]\\]"):
        load_text(tmp_path, BASE.split("[[hosts]]")[0])
