"""What the tests and the benchmarks share (plain modules, no pytest; the fixtures are in `tests/conftest.py`).

- `nodes`: node XML files for libvirt's test driver with one CVM of each security type (`make_node`)
- `agents`: `hostctl demo serve-host` as its own restartable process (`AgentProcess`)
- `ssh`: what a client needs to reach a test SSH server (`SSHEndpoint`) and the keys both servers use
- `openssh`: a real OpenSSH sshd on loopback (`openssh`)
- `asyncssh_server`: an in-process asyncssh server running commands as real subprocesses (`asyncssh_server`)
- `proxy`: a TCP proxy whose connections can be cut or paused (`CuttableProxy`)
- `waiting`: polling for a condition with a deadline (`until`)
- `chromium`: headless Chromium over its DevTools protocol: a page, its keys, an xterm.js terminal's text (`chromium`)
- `lab`: the lab site of real QEMU guests (`start`, `stop_and_check`), the guest's own view, libvirt's client
"""

from pathlib import Path

#: The repository's root: the working directory of the `hostctl` processes tests start.
ROOT = Path(__file__).resolve().parents[2]
