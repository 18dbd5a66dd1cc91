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


KINDS = ("tagger", "localizer", "segmenter", "captioner", "output")


@click.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default="tagger", show_default=True,
              help="What the plugin's stage does.")
@click.option("--directory", "-d", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where to create the package folder.")
def new_command(name, kind, directory):
    """Create a ready plugin package NAME: pyproject with the entry point, a stage, a test, a README.

    \b
    recognize plugins new blur-check --kind tagger
    pip install -e recognize-blur-check && python -m pytest recognize-blur-check
    """
    from recognize.plugin_template import PluginNames, write_plugin

    root = write_plugin(name, kind, directory)
    names = PluginNames.from_name(name)
    click.echo(f"created {root}: the {kind} stage {names.stage!r} ({names.module}.stage.{names.cls})")
    click.echo(f"next: pip install -e {root} && python -m pytest {root}")


def _plugins_group() -> click.Group:
    """`recognize plugins` lists; `recognize plugins new` creates. The listing stays the group's own action."""

    @click.pass_context
    def list_unless_subcommand(ctx, **options):
        if ctx.invoked_subcommand is None:
            ctx.invoke(plugins_command, **options)

    group = click.Group("plugins", callback=list_unless_subcommand, params=list(plugins_command.params),
                        help=f"{plugins_command.help}\n\n`recognize plugins new NAME` creates a plugin package.",
                        invoke_without_command=True)
    group.add_command(new_command)
    return group


def add_commands(cli):
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(_plugins_group())
