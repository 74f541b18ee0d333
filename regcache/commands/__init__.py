"""Operator commands beside the server: `python -m regcache <command> ...`.

Each command is a module here with `main(argv: list[str]) -> int`; COMMANDS maps the name typed
on the command line to its module. Without a command name, `python -m regcache` serves.
"""

from __future__ import annotations

import importlib

COMMANDS: dict[str, str] = {
    "ls": "ls",
    "du": "du",
    "verify": "verify",
    "rm": "rm",
    "prune": "prune",
    "prefetch": "prefetch",
    "node-config": "node_config",
}


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"regcache.commands.{COMMANDS[name]}")
    return int(module.main(argv))
