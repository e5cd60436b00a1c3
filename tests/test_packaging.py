"""The package installs anywhere: the wheel built from this tree holds every file the code reads, and installed
into a fresh venv it runs the demo site from a directory far from the repository.

The fresh venv gets the wheel alone (`--no-deps --no-index`, so nothing is fetched); its dependencies are this
venv's, reached through a `.pth` file added after the install, behind the venv's own site-packages, and `pip check`
confirms the wheel's declared requirements are met by them. This venv's editable install of this tree is not
visible there (a `.pth` file only takes effect in a site directory), which the test checks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostctl import data
from hostctl.cli.main import parser
from hostctl.client import site
from tests.support import ROOT

PACKAGES = ("hostctl", "dittotui")
DEMO_HOSTS = ("mec-1", "mec-2", "regional-1")
TIMEOUT = 120  # seconds for any one command; a build or demo start on a loaded 2-core machine takes far less


@dataclass(frozen=True)
class Installed:
    """A fresh venv holding the wheel, and the environment its commands run in (no PYTHONPATH, no repository)."""

    venv: Path
    home: Path
    env: dict[str, str]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.home,
            env=self.env,
            check=False,
        )
        if check:
            assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        return proc


def pip(*args: str, cwd: Path) -> None:
    """pip, away from the repository: its `dittotui.egg-info` on PYTHONPATH or in the working directory would make
    pip take the wheel as installed already."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=False,
    )
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the tree (a build writes `build/` and egg-info beside its sources)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(source), cwd=work)
    (built,) = (work / "dist").glob("dittotui-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    target = root / "venv"
    venv.create(target, with_pip=False)
    python = str(target / "bin" / "python")
    pip("--python", python, "install", "--no-deps", "--no-index", str(wheel), cwd=root)
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout.strip()
    )
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    pip("--python", python, "check", cwd=root)
    home = root / "elsewhere"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("XDG_")}
    env |= {"HOME": str(home), "XDG_RUNTIME_DIR": str(root / "run"), "XDG_STATE_HOME": str(root / "state")}
    (root / "run").mkdir(mode=0o700)
    return Installed(target, home, env)


def test_wheel_holds_every_file_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        path.relative_to(ROOT).as_posix()
        for name in PACKAGES
        for path in (ROOT / name).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped - names == set()
    for needed in (
        "hostctl/data/demo.toml",
        "hostctl/data/policies/guard.toml",
        "hostctl/data/policies/concurrency.toml",
        "hostctl/data/hostctl-agent.service",
        "hostctl/data/site.example.toml",
        "hostctl/data/prometheus/alerts.yml",
        "hostctl/data/prometheus/alerts_test.yml",
        "hostctl/data/prometheus/prometheus.yml",
        "hostctl/load/scripts/report.lua",
        "hostctl/load/scripts/mixed.lua",
        "hostctl/py.typed",
        "dittotui/app.tcss",
    ):
        assert needed in names


def test_installed_package_runs_the_demo_from_anywhere(installed: Installed) -> None:
    where = installed.run("python", "-c", "import hostctl, dittotui; print(hostctl.__file__, dittotui.__file__)")
    for module in where.stdout.split():
        assert Path(module).is_relative_to(installed.venv), where.stdout
    assert "usage: dittotui" in installed.run("dittotui", "--help").stdout

    try:
        up = installed.run("hostctl", "demo", "up").stdout
        for host in DEMO_HOSTS:
            assert f"{host}: started" in up
        site = up.rsplit("site file: ", 1)[1].strip()

        status = installed.run("hostctl", "--site", site, "status").stdout
        for host in DEMO_HOSTS:
            assert host in status
        for cvm in ("social-snp", "media-es", "gateway-plain"):
            assert cvm in status
        # The shipped policies reached the agent: choosing one is accepted.
        policy = installed.run("hostctl", "--site", site, "policy", "mec-1/social-snp", "--name", "slo")
        assert "mec-1/social-snp: policy slo off" in policy.stdout
    finally:
        down = installed.run("hostctl", "demo", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert "demo site is not running" in installed.run("hostctl", "demo", "status").stdout


def agent(policies: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """An agent for libvirt's default test host whose peer leaves at once (its stdin pipe is closed)."""
    argv = ["--uri", "test:///default", "agent", "--stdio", "--policies", str(policies)]
    return subprocess.run(
        [sys.executable, "-m", "hostctl", *argv, "--audit", str(tmp_path / "audit.jsonl")],
        input="",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=False,
    )


def test_agent_with_an_empty_policy_directory_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "policies"
    empty.mkdir()
    (empty / "guard.toml").write_text("max_step_up = 2\n")
    proc = agent(empty, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"hostctl: warning: {empty}: no policy files (NAME.toml); elastic policies are off"
    ]


def test_agent_with_a_missing_policy_directory_refuses_to_start(tmp_path: Path) -> None:
    proc = agent(tmp_path / "nowhere", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"hostctl: {tmp_path / 'nowhere'}: no such policy directory"]


def test_agent_unit_runs_a_serve_hostctl_accepts() -> None:
    """The systemd unit's command line parses as `hostctl serve`, on the socket the example site file reaches."""
    (line,) = [line for line in data.AGENT_UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/opt/dittotui/bin/hostctl"
    args = parser().parse_args(argv[1:])
    assert (args.command, args.uri, args.readonly) == ("serve", "qemu:///system", False)
    sockets = {host.socket for host in site.load(data.SITE_EXAMPLE).hosts if host.socket}
    assert sockets == {str(args.socket)} == {"/run/dittotui/agent.sock"}
