"""Print the project's runtime and dev requirements from pyproject.toml, one per line.

The Makefile installs these before building the extension, so that `maturin develop` never has to
resolve dependencies itself and the build step stays a pure Rust build.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def main() -> None:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    print("\n".join(requirements))


if __name__ == "__main__":
    main()
