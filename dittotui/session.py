"""The embedded demo site, started for one console session and stopped with it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hostctl.client.site import Site
from hostctl.client.site import load as load_site
from hostctl.demo import launcher
from hostctl.demo.config import DEFAULT_CONFIG


class DemoSession:
    """Runs the demo hosts in a private runtime directory for as long as the console runs."""

    def __init__(self, config: Path = DEFAULT_CONFIG) -> None:
        self.config = config
        self.runtime = Path(tempfile.mkdtemp(prefix="dittotui-demo-"))
        self.running = False

    async def start(self) -> Site:
        self.running = True
        await launcher.up(self.config, self.runtime)
        return load_site(launcher.site_file(self.runtime))

    async def stop(self) -> None:
        if self.running:
            await launcher.down(self.runtime)
            self.running = False
        shutil.rmtree(self.runtime, ignore_errors=True)
