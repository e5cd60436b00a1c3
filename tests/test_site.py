"""The site inventory: the example loads, bad input gives one clear line, destinations parse, write/load round-trips."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostctl import data
from hostctl.client import site
from hostctl.demo.site import demo_site
from hostctl.errors import ConfigError, HostctlError

EXAMPLE = data.SITE_EXAMPLE
BASE = EXAMPLE.read_text()


def load_text(tmp_path: Path, text: str) -> site.Site:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return site.load(path)


def test_example_site_loads() -> None:
    s = site.load(EXAMPLE)
    assert s.source == str(EXAMPLE)
    assert [h.name for h in s.hosts] == ["mec-1", "mec-2", "regional-1", "mec-3"]
    mec1, mec2, regional, mec3 = s.hosts
    assert mec3.agentless and not any(h.agentless for h in (mec1, mec2, regional))  # mec-3: uri alone, no agent
    assert mec1.jump == "ops@bastion.example.net" and mec1.target() == ("ops", "mec-1.example.net", None)
    assert mec1.agent_argv(s.defaults) == ["hostctl", "agent", "--stdio"]
    assert mec2.socket == "/run/dittotui/agent.sock" and mec2.target() == ("ops", "mec-2.example.net", 2222)
    assert regional.target() == (None, "regional-1", None)
    assert regional.agent_argv(s.defaults)[:2] == ["sudo", "-n"]
    assert [x.url for x in s.services_of("mec-1", "social-snp")] == ["http://social-snp.mec-1.example.net:8080/"]
    assert s.services_of("mec-2", "no-such-cvm") == []
    assert [(g.name, g.wrk, g.target()) for g in s.load_generators] == [
        ("edge-1", "/usr/local/bin/wrk", ("ops", "edge-1.example.net", None))
    ]
    assert s.defaults == site.Defaults()


def test_unknown_host_lists_the_known_ones() -> None:
    s = site.load(EXAMPLE)
    with pytest.raises(HostctlError, match=r"unknown host 'mec-9' \(known: mec-1, mec-2, regional-1, mec-3\)"):
        s.host("mec-9")
    with pytest.raises(HostctlError, match="unknown host"):
        s.services_of("mec-9", "social-snp")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("interval = 1.0", "interval = 1.0 2.0"), r"^\S*site\.toml: TOML syntax error"),
        (("timeout = 5.0", 'timeout = "soon"'), r"site\.toml: defaults\.timeout: expected a number, got 'soon'"),
        (("keepalive = 5.0", "keepalive = 0"), r"site\.toml: defaults\.keepalive: 0\.0 must be from 0\.1 to 3600"),
        (
            ("\n[defaults]\n", '\nsource = "x"\n[defaults]\n'),
            r"site\.toml: source: unknown key \(known: defaults, hosts, load, load_generators\)",
        ),
        (
            ('wrk = "/usr/local/bin/wrk"', 'wrk = "/usr/local/bin/wrk"\nthreads = 4'),
            r"site\.toml: load_generators\[0\]\.threads: unknown key",
        ),
        (
            ('ssh = "regional-1"\n', ""),
            r"site\.toml: hosts\[2\]: host 'regional-1': give ssh = \"user@host\" or "
            r"socket = \"/path\"",
        ),
        (
            ('name = "mec-2"', 'name = "mec-1"'),
            r"site\.toml: top level: hosts\[1\]\.name: host name 'mec-1' appears "
            r"twice \(first at hosts\[0\]\)",
        ),
        (
            ('url = "https://social-snp.mec-2.example.net/"', 'url = "ftp://social-snp.mec-2.example.net/"'),
            r"site\.toml: hosts\[1\]\.services\[0\]\.url: 'ftp://social-snp\.mec-2\.example\.net/' must start with "
            r"http:// or https://",
        ),
        (
            ('agent = ["hostctl", "agent", "--stdio"]', "agent = []"),
            r"site\.toml: defaults: agent = \[\] must be a non-empty command",
        ),
        (
            ('agent = ["sudo", "-n", "/opt/dittotui/bin/hostctl", "agent", "--stdio"]', "agent = []"),
            r"site\.toml: hosts\[2\]: host 'regional-1': agent = \[\] must be a non-empty command",
        ),
        (
            ('ssh = "regional-1"', 'jump = "bastion.example.net"\nsocket = "/run/a.sock"'),
            r"site\.toml: hosts\[2\]: host 'regional-1': jump = 'bastion\.example\.net' needs ssh",
        ),
        (
            ('ssh = "ops@mec-2.example.net:2222"', 'ssh = "ops@mec-2.example.net:99999"'),
            r"site\.toml: hosts\[1\]\.ssh: 'ops@mec-2\.example\.net:99999' is not an SSH destination.*port '99999'",
        ),
        (
            ('ssh = "regional-1"', 'ssh = "-oProxyCommand=sh"'),
            r"site\.toml: hosts\[2\]\.ssh: '-oProxyCommand=sh' is not an SSH destination",
        ),
        (
            ('socket = "/run/dittotui/agent.sock"', 'socket = "agent.sock"'),
            r"site\.toml: hosts\[1\]\.socket: 'agent\.sock' must be an absolute path",
        ),
        (
            ('ssh = "ops@mec-2.example.net:2222"', "ssh = 2222"),
            r"site\.toml: hosts\[1\]\.ssh: expected a string, "
            r"got 2222",
        ),
        (('name = "edge-1"', 'name = "edge 1"'), r"site\.toml: load_generators\[0\]\.name: 'edge 1' must be letters"),
    ],
)
def test_bad_values_name_file_field_and_value(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert BASE.count(old) == 1
    with pytest.raises(ConfigError, match=message) as info:
        load_text(tmp_path, BASE.replace(old, new))
    assert "\n" not in str(info.value).split("TOML syntax error")[0]


def test_a_site_without_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site\.toml: top level: hosts: at least one \[\[hosts\]\]"):
        load_text(tmp_path, "[defaults]\ninterval = 2.0\n")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        site.load(tmp_path / "nope.toml")


def test_agent_and_socket_together_are_refused() -> None:
    with pytest.raises(ValueError, match=r"agent .* or socket .*not both"):
        site.HostEntry(name="h", ssh="h", socket="/run/a.sock", agent=["hostctl"])


@pytest.mark.parametrize(
    ("dest", "parsed"),
    [
        ("user@host", ("user", "host", None)),
        ("host", (None, "host", None)),
        ("host:2222", (None, "host", 2222)),
        ("user@host:2222", ("user", "host", 2222)),
        ("[::1]:2222", (None, "::1", 2222)),
        ("ops@[2001:db8::7]", ("ops", "2001:db8::7", None)),
        ("fe80::1", (None, "fe80::1", None)),
        ("mec-1", (None, "mec-1", None)),  # an ~/.ssh/config alias
        ("ops@10.0.0.1:22", ("ops", "10.0.0.1", 22)),
    ],
)
def test_target_parses_destinations(dest: str, parsed: tuple[str | None, str, int | None]) -> None:
    assert site.HostEntry(name="h", ssh=dest).target() == parsed
    assert site.LoadGenerator(name="g", ssh=dest).target() == parsed


@pytest.mark.parametrize(
    "dest", ["", "user@", "@host", "host:", "host:0", "host:http", "[::1", "[::1]x", "a b", "-host", "x::y", "u@v@"]
)
def test_bad_destinations_are_refused(dest: str) -> None:
    with pytest.raises(ValueError):
        site.parse_destination(dest)


def test_local_hosts_have_no_target() -> None:
    assert site.HostEntry(name="h", socket="/tmp/h.sock").target() == (None, None, None)
    assert site.LoadGenerator(name="here").target() == (None, None, None)


def test_demo_site_reaches_hosts_through_local_sockets(tmp_path: Path) -> None:
    svc = site.ServiceEntry(cvm="social-snp", name="social-network", url="http://127.0.0.1:8081/")
    s = demo_site({"mec-1": tmp_path / "mec-1.sock", "mec-2": tmp_path / "mec-2.sock"}, {"mec-1": [svc]})
    assert [(h.name, h.ssh, h.socket) for h in s.hosts] == [
        ("mec-1", None, str(tmp_path / "mec-1.sock")),
        ("mec-2", None, str(tmp_path / "mec-2.sock")),
    ]
    path = tmp_path / "site.toml"
    site.write(s, path)
    assert s.source == str(path)
    again = site.load(path)
    assert again == s and again.services_of("mec-1", "social-snp") == [svc]


# --- write/load round trip ---------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)
words = st.from_regex(r"[a-z0-9_][a-z0-9._-]{0,8}", fullmatch=True)
text = st.text(min_size=1, max_size=12)  # any characters: quotes, backslashes, controls, non-ASCII
paths = text.map(lambda t: "/" + t.replace("\0", ""))
ports = st.none() | st.integers(1, 65535)
hosts_part = words | st.sampled_from(["[::1]", "[2001:db8::1]", "10.0.0.1"])
destinations = st.builds(
    lambda user, host, port: (f"{user}@" if user else "") + host + (f":{port}" if port else ""),
    st.none() | words,
    hosts_part,
    ports,
)
seconds = st.floats(min_value=0.1, max_value=3600)  # the bounds every duration of the defaults shares
argv = st.lists(text, min_size=1, max_size=4)
services = st.builds(
    site.ServiceEntry,
    cvm=names,
    name=names,
    url=st.builds(
        lambda s, h, p: f"{s}://{h}{p}",
        st.sampled_from(["http", "https"]),
        words,
        st.sampled_from(["", "/", ":8080/x?y=1"]),
    ),
)


@st.composite
def host_entries(draw: st.DrawFn, name: str) -> site.HostEntry:
    over_ssh = draw(st.booleans())
    socket = draw(st.none() | paths) if over_ssh else draw(paths)
    return site.HostEntry(
        name=name,
        ssh=draw(destinations) if over_ssh else None,
        socket=socket,
        agent=draw(st.none() | argv) if over_ssh and socket is None else None,
        jump=draw(st.none() | destinations) if over_ssh else None,
        uri=draw(st.none() | st.sampled_from(["qemu:///system", "test:///default", "qemu+ssh://h/system"])),
        services=draw(st.lists(services, max_size=3, unique_by=lambda s: (s.cvm, s.name))),
    )


@st.composite
def sites(draw: st.DrawFn) -> site.Site:
    defaults = site.Defaults(
        interval=draw(seconds),
        timeout=draw(seconds),
        keepalive=draw(seconds),
        known_hosts=draw(text),
        agent=draw(argv),
        backoff_max=draw(seconds),
    )
    host_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    generators = st.builds(site.LoadGenerator, name=names, ssh=st.none() | destinations, wrk=text)
    return site.Site(
        defaults=defaults,
        hosts=[draw(host_entries(n)) for n in host_names],
        load_generators=draw(st.lists(generators, max_size=2, unique_by=lambda g: g.name)),
    )


@settings(max_examples=60, deadline=None)
@given(sites())
def test_write_then_load_round_trips(s: site.Site) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        site.write(s, path)
        assert site.load(path) == s
