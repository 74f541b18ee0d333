"""Real peer processes for regcache's tests: registries, token server, S3, proxy, containerd.

Each peer runs loopback-only on free ports, keeps its logs in its own temp dir, and is killed
on stop() and at interpreter exit, so a failing test never leaves a daemon behind.
"""
