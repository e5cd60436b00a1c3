"""The filter box's rule, shared by the tables it narrows."""

from __future__ import annotations


def matches(text: str, *fields: str) -> bool:
    """Case-insensitive substring filter over a row's fields (every word must match)."""
    haystack = " ".join(fields).lower()
    return all(word in haystack for word in text.lower().split())
