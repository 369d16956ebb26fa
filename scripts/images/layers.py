"""Print an image's largest layers from `podman history --format json` on stdin."""

import json
import sys

for h in sorted(json.load(sys.stdin), key=lambda h: -h["size"])[: int(sys.argv[1])]:
    print(f"  {h['size'] / 1e6:9.1f} MB  {' '.join(h['CreatedBy'].split())[:110]}")
