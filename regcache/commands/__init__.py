"""Operator commands beside the server: `python -m regcache <command> ...`.

Each command is a module here with `main(argv: list[str]) -> int`, named as the command is typed
with "_" for "-" (node-config is node_config). Without a command name, `python -m regcache` serves.
"""

from __future__ import annotations

COMMANDS = ("ls", "du", "verify", "rm", "prune", "prefetch", "node-config")
