"""Every key, and what the columns mean."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# dittotui

Worker vCPUs are measured at launch, sleep while idle, and are woken or parked at runtime.
**Workers** shows active of maximum; scaling changes the CVM's online vCPUs (boot + workers),
compare-and-set: a retry never applies twice. A count that cannot be read shows as `?` with why
(`no agent`: the guest agent does not answer; `paused`, `shut off`); `enter` shows the last count known
and its age. Such a CVM is not scaled, and its policy holds. **CPU%on**: CPU use as a share of the CVM's
*online* vCPUs (`-` while their count is unknown).

| key | action |
|---|---|
| `+` / `-` | wake / park one worker on the selected (or marked) CVMs |
| `space` | mark or unmark the selected CVM; actions then apply to all marked, after a confirm |
| `w` | run wrk load against the selected CVM's service |
| `a` / `p` | switch the elastic policy of the selected (or marked) CVMs on or off / pick which one |
| `enter` | CVM detail: worker and CPU history |
| `d` | doctor: the selected host's checks (SEV/SNP, libvirt, QEMU, drivers, guest agents), run by its agent |
| `/` | filter CVMs and services (every word must match); `escape` clears |
| `s` | sort the focused table by the next column; click a header to sort by it |
| `j` / `k` | move down / up (or the arrow keys); `g` / `G` to the first / last row (or `home` / `end`) |
| `tab` | move between tables |
| `ctrl+p` | command palette: every action |
| `?` | this help |
| `q` | quit (stops the demo site this session started) |

**Hosts**: `live` when data arrives on time; `stale` with the age of the last data when a host stops
answering (its CVMs dim); `connecting` with the reason when it was never reached.
`◇` after a host's name: it has no agent installed; its agent runs inside this console, over libvirt's
SSH transport (`uri = "qemu+ssh://..."`), so **its elastic policies run only while this console runs**.
**vCPUs used/cap**: online vCPUs of running CVMs against the host's CPUs (`+?` when some count is unknown).
**Elastic**: the CVM's policy, run by its host's agent (so it keeps working with no console attached):
`●` on, `○` off, yellow when it holds for want of fresh data or host capacity. **Last decision**: what the
policy last did and why; every decision is also in the audit log. A manual `+`/`-` pauses the policy for
that CVM for a grace time: the operator wins.
"""


class HelpScreen(ModalScreen[None]):
    """The keys and what the columns mean; `escape`, `q` or `?` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Markdown(HELP)
