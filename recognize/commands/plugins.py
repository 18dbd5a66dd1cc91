"""`recognize plugins`: what is installed, at which version, and what each plugin provides."""

from __future__ import annotations

import json
from dataclasses import asdict

import click



@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json):
    """List plugins (built-in and installed), their versions and their stages."""
    from recognize.plugins import broken_plugins, plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for name, reason in broken_plugins.items():
        click.echo(f"{name} (failed to load: {reason})")
    for info in infos:
        origin = "built-in" if info.builtin else "installed"
        click.echo(f"{info.name} {info.version or '?'} ({origin})")
        for label, names in (("stages", info.stages), ("outputs", info.outputs), ("models", info.models)):
            if names:
                click.echo(f"  {label}: {', '.join(names)}")


def add_commands(cli):
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(plugins_command)
