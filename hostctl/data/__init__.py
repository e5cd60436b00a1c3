"""Files that ship inside the package, next to this module: the demo site, the default elastic policies, the
systemd unit for `hostctl serve` and an example site file. Copy the last two out of an installed package with
`python -c 'import hostctl.data as d; print(d.AGENT_UNIT)'` (or `d.SITE_EXAMPLE`)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_CONFIG = HERE / "demo.toml"
POLICIES = HERE / "policies"
AGENT_UNIT = HERE / "hostctl-agent.service"
SITE_EXAMPLE = HERE / "site.example.toml"
