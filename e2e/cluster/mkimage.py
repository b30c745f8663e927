#!/usr/bin/env python3
"""Write a one-layer FROM-scratch image as a `docker save` style tarball, without a Docker daemon.

    mkimage.py OUT.tar REF --file SRC:DST[:MODE] ... --entrypoint /bin [--arg A ...]

The tarball imports with `ctr -n k8s.io images import OUT.tar` (or `docker load`).
Only the Python standard library is used, and timestamps are fixed so output is reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

EPOCH = 0


def _layer(files: list[tuple[Path, str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for _, dst, _ in files:
            parts = dst.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for src, dst, mode in files:
            data = src.read_bytes()
            info = tarfile.TarInfo(dst.strip("/"))
            info.size, info.mode, info.mtime = len(data), mode, EPOCH
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out")
    ap.add_argument("ref", help="image reference, e.g. registry.k8s.io/pause:3.10.1")
    ap.add_argument("--file", action="append", default=[], help="SRC:DST[:octal mode]")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--arg", action="append", default=[])
    ap.add_argument("--user", default="")
    ns = ap.parse_args()

    files = []
    for spec in ns.file:
        src, dst, *mode = spec.split(":")
        files.append((Path(src), dst, int(mode[0], 8) if mode else 0o755))
    layer = _layer(files)
    layer_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": [ns.entrypoint], "Cmd": ns.arg or None, "User": ns.user,
                   "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": "paxoskv e2e/cluster/mkimage.py"}
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [
        {"Config": f"{config_id}.json", "RepoTags": [ns.ref], "Layers": [f"{layer_id}/layer.tar"]}
    ]

    out = Path(ns.out)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((f"{config_id}.json", config_bytes), (f"{layer_id}/layer.tar", layer),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), EPOCH
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
    print(f"{out}: {ns.ref} ({len(layer)} byte layer)")


if __name__ == "__main__":
    main()
