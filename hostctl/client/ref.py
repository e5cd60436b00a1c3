"""`HOST/CVM`: how a CVM of a site is named on the command line, in the console's rows and in experiments."""

from __future__ import annotations

from dataclasses import dataclass

from hostctl.errors import HostctlError


@dataclass(frozen=True, slots=True)
class CVMRef:
    """Which CVM on which host."""

    host: str
    cvm: str

    @property
    def key(self) -> str:
        """`HOST/CVM`, the form `parse` reads back."""
        return f"{self.host}/{self.cvm}"

    @classmethod
    def parse(cls, text: str) -> CVMRef:
        """Read `HOST/CVM`; HostctlError naming the text when either part is missing."""
        host, slash, cvm = text.partition("/")
        if not slash or not host or not cvm:
            raise HostctlError(f"name the CVM as HOST/CVM (got {text!r})")
        return cls(host, cvm)
