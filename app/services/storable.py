"""What the databases cannot store: PostgreSQL text and jsonb refuse the NUL character, so a
request carrying one is refused up front (400, naming where) instead of failing at commit."""

from __future__ import annotations

from typing import Any


def nul_paths(value: Any, path: str = "") -> list[str]:
    """The dotted paths in a JSON value where a string (or a key) holds a NUL character."""
    if isinstance(value, str):
        return [path or "body"] if "\x00" in value else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            here = f"{path}.{key}".lstrip(".")
            if "\x00" in key:
                found.append(here.replace("\x00", "\\u0000"))
            found.extend(nul_paths(item, here))
        return found
    if isinstance(value, list):
        return [hit for index, item in enumerate(value)
                for hit in nul_paths(item, f"{path}.{index}".lstrip("."))]
    return []
