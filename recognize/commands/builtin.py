"""Built-in plugin: the CLI's own commands, registered through `register_commands` like a plugin's.

The command modules import click, so they are imported inside the hook, which only the CLI calls:
library use (`Pipeline.from_recipe`, `recognize.plugins.stages()`) never imports click or a command.
"""

from __future__ import annotations

import importlib
from typing import Any

from recognize.hookspecs import hookimpl

#: modules with an `add_commands(cli)` function, in `recognize --help` order
COMMAND_MODULES = (
    "recognize.commands.run",
    "recognize.commands.plugins",
    "recognize.commands.models",
    "recognize.commands.eval",
    "recognize.commands.serve",
)


@hookimpl
def register_commands(cli: Any) -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(cli)
