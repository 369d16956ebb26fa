"""Print pyproject.toml's pinned requirements for the image builds, one a line.

`python requirements.py [--extras-only] EXTRA...`, run beside pyproject.toml: the project's
dependencies plus the extras'. Installing these before the sources are copied keeps the
dependency layers cached across source changes."""

import sys
import tomllib

args = sys.argv[1:]
only = "--extras-only" in args
extras = [a for a in args if not a.startswith("--")]
with open("pyproject.toml", "rb") as f:  # of the current directory
    project = tomllib.load(f)["project"]
reqs = [] if only else list(project["dependencies"])
for extra in extras:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
