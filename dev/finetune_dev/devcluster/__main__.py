"""`python -m finetune_dev.devcluster build|up|down|status|env`."""

from __future__ import annotations

import argparse
import json
import sys

from finetune_dev.devcluster import build
from finetune_dev.devcluster.cluster import ClusterConfig, ClusterError, down, status, up


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="finetune-devcluster", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the control-plane binaries into the cache (if missing)")
    u = sub.add_parser("up", help="start the local cluster (builds first if needed)")
    u.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    u.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node (default 8)")
    d = sub.add_parser("down", help="stop every process of the local cluster")
    d.add_argument("--keep-data", action="store_true", help="keep etcd data for the next up")
    sub.add_parser("status", help="what runs, the kubeconfig, the nodes")
    sub.add_parser("env", help="print `export KUBECONFIG=...` for your shell")
    args = ap.parse_args(argv)
    cfg = ClusterConfig()
    try:
        if args.cmd == "build":
            build.ensure_built()
            for c in build.COMPONENTS:
                print(f"{c.name} {c.version}: {c.bin_dir}")
        elif args.cmd == "up":
            cfg.nodes, cfg.gpus_per_node = args.nodes, args.gpus
            up(cfg)
            print(f"export KUBECONFIG={cfg.kubeconfig}")
            print(f"export PATH={build.component('kubernetes').bin_dir}:$PATH  # kubectl")
        elif args.cmd == "down":
            down(cfg, keep_data=args.keep_data)
        elif args.cmd == "status":
            info = status(cfg)
            print(json.dumps(info, indent=2))
            return 0 if info["apiReady"] else 3
        elif args.cmd == "env":
            print(f"export KUBECONFIG={cfg.kubeconfig}")
            print(f"export PATH={build.component('kubernetes').bin_dir}:$PATH")
    except (build.BuildError, ClusterError) as e:
        print(f"finetune-devcluster {args.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
