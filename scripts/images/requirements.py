"""Print a distribution's pinned third-party requirements for the image builds, one a line.

`python requirements.py [--extras-only] DIST[EXTRA,...]...`, run where the distributions'
folders are (api/, operator/, trainer/): each one's dependencies plus the named extras', without
our own distributions (finetune-*), which the build installs from source afterwards. Installing
these before the sources are copied keeps the dependency layers cached across source changes."""

import sys
import tomllib

args = sys.argv[1:]
only = "--extras-only" in args
reqs: list[str] = []
for arg in (a for a in args if not a.startswith("--")):
    dist, _, extras = arg.partition("[")
    with open(f"{dist}/pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    if not only:
        reqs += project.get("dependencies", [])
    for extra in filter(None, extras.rstrip("]").split(",")):
        reqs += project["optional-dependencies"][extra]
print("\n".join(r for r in dict.fromkeys(reqs) if not r.startswith("finetune-")))
