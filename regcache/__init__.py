"""regcache: a pull-through, multi-registry image cache for containerd."""

__version__ = "0.1.0"
