"""Fail when requirements.lock no longer satisfies pyproject.toml's requirements.

`make env` installs only from the lock, so a requirement added or tightened in pyproject.toml
without `make lock` would never reach anyone's venv; this check (part of `make lint`) catches that.
Every requirement of the runtime dependencies and the dev extra must have a pin in the lock, and
each of its pins (one per Python version range, where the lock splits) must fall in its range.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# A pin line of the lock: `name==version`, optionally followed by `; markers` and a hash list.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)")


def locked_versions(text: str) -> dict[str, list[Version]]:
    """Each package name in the lock with every version pinned for it."""
    versions: dict[str, list[Version]] = {}
    for line in text.splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match.group(1))
            versions.setdefault(name, []).append(Version(match.group(2)))
    return versions


def problems(project: dict[str, Any], lock_text: str) -> list[str]:
    """What in the lock does not satisfy the project's requirements, one line each."""
    locked = locked_versions(lock_text)
    found: list[str] = []
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(spec)
        pins = locked.get(canonicalize_name(requirement.name), [])
        if not pins:
            found.append(f"{requirement}: not in {LOCK.name}")
        found.extend(
            f"{requirement}: {LOCK.name} pins {version}"
            for version in pins
            if not requirement.specifier.contains(version, prereleases=True)
        )
    return found


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = problems(project, LOCK.read_text(encoding="utf-8"))
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print("pyproject.toml and the lock disagree: run `make lock`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
