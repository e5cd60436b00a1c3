"""Pick the elastic policy of the selected CVMs from what their agent offers."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class PolicyScreen(ModalScreen[str | None]):
    """The agent's policies, each with its one-line description; `enter` picks, `escape` cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape", "dismiss(None)", "Cancel")]

    def __init__(self, what: str, policies: dict[str, str], current: str | None) -> None:
        super().__init__()
        self.what = what
        self.policies = policies
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Elastic policy for {self.what}", id="question")
            yield OptionList(
                *(
                    Option(f"{'●' if name == self.current else ' '} {name}: {description}", id=name)
                    for name, description in self.policies.items()
                ),
                id="policies",
            )
            yield Label("enter picks; `a` switches it on or off; escape cancels", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = list(self.policies)
        options.highlighted = names.index(self.current) if self.current in names else 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
