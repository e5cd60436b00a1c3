"""Files that ship inside the package, next to this module: the demo site, the default elastic policies, the
systemd unit for `hostctl serve`, an example site file, and Prometheus's scrape config, alert rules and their tests.
Copy the unit or the example site file out of an installed package with
`python -c 'import hostctl.data as d; print(d.AGENT_UNIT)'` (or `d.SITE_EXAMPLE`, `d.PROMETHEUS`)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_CONFIG = HERE / "demo.toml"
POLICIES = HERE / "policies"
AGENT_UNIT = HERE / "hostctl-agent.service"
SITE_EXAMPLE = HERE / "site.example.toml"
PROMETHEUS = HERE / "prometheus"  # prometheus.yml, alerts.yml and alerts_test.yml (promtool test rules)
