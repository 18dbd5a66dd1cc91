"""`recognize plugins`: what is installed, at which version, what each plugin provides, and what is broken."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json):
    """List plugins (built-in and installed), their versions, their stages, and their problems.

    A plugin that fails to import, has a hook with the wrong signature, raises in a hook or
    registers something that breaks the contract is listed with the reason and skipped:
    every other plugin keeps working. A stage name two plugins register is shown qualified
    (`PLUGIN:NAME`); a recipe must use that form.
    """
    from recognize.plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for info in infos:
        origin = "built-in" if info.builtin else "installed"
        click.echo(f"{info.name} {info.version or '?'} ({origin})")
        for label, names in (("stages", info.stages), ("outputs", info.outputs), ("models", info.models)):
            if names:
                click.echo(f"  {label}: {', '.join(names)}")
        for problem in info.problems:
            click.echo(f"  problem: {problem}")


def add_commands(cli):
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(plugins_command)
