"""``python -m app.check_config`` and ``flask --app wsgi jobsprint check-config``: every setting
as Jobsprint reads it from the environment (secrets masked), then every problem with them.

It needs neither a database nor a working app, so it is what to run when start-up stops with
"cannot start: …" (which names only the first problem). When the settings are broken the
``flask`` command cannot build the app to find its commands, so ``wsgi.py`` asks
``requested`` and answers this one itself. Exit status: 0 when nothing is wrong, else 1.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from app.config import read_settings


def report(env: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
    """The lines to print, and whether the settings are usable."""
    check = read_settings(env)
    settings = check.settings
    mode = "embedded default" if settings.embedded else "production (DATABASE_URL is set)"
    rows = [(check.sources.get(name, name), "INVALID, see below" if name in check.invalid
             else shown) for name, shown in settings.describe()]
    width = max(len(label) for label, _ in rows)
    lines = [f"Jobsprint settings: {mode}",
             "(a VARIABLE can be set; a lower-case setting follows from the others)"]
    lines += [f"  {label:<{width}}  {shown}" for label, shown in rows]
    if check.problems:
        count = len(check.problems)
        lines.append(f"{count} problem{'s' if count > 1 else ''}:")
        lines += [f"  {problem}" for problem in check.problems]
    else:
        lines.append("No problems found.")
    return lines, not check.problems


def requested(argv: Sequence[str]) -> bool:
    """Whether a ``flask`` command line asks for ``jobsprint check-config``."""
    pairs = zip(argv, argv[1:], strict=False)
    return any(a == "jobsprint" and b == "check-config" for a, b in pairs)


def main(env: Mapping[str, str] | None = None) -> int:
    lines, usable = report(env)
    print("\n".join(lines))
    return 0 if usable else 1


if __name__ == "__main__":
    sys.exit(main())
