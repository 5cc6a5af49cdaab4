"""Problems found in a definition, and the JSON paths that locate them for the editor."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem. ``path`` is like ``nodes[3].params.url`` ("" for the root);
    ``node_id`` lets the editor highlight the node without parsing the path."""

    path: str
    message: str
    node_id: str | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "message": self.message}


def join_path(*parts: str | int) -> str:
    """``join_path("nodes", 3, "params", "a.b")`` -> ``nodes[3].params["a.b"]``.

    Keys that are not identifiers are written as quoted brackets, so a path can always be
    parsed back into its parts.
    """
    out = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)
