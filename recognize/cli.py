"""The `recognize` command. Every subcommand, built-in or from a plugin, arrives through the
`register_commands(cli)` hook; this module only builds the group and turns user errors into
one line on stderr with a meaningful exit code (1 failures, 2 bad input or recipe, 3 weights)."""

from __future__ import annotations

import sys

import click

from recognize import __version__, heap
from recognize.errors import RecognizeError


class RecognizeGroup(click.Group):
    """A click group that prints `RecognizeError`s as one line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecognizeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=RecognizeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="recognize")
def cli() -> None:
    """Turn images into tags, boxes and masks.

    \b
    Start with:
      recognize run recipes/tag.yaml photos/ -o out/
      recognize stages            # what a recipe can use
      recognize models list       # weights and where they are cached
    """


def build_cli() -> click.Group:
    from recognize.plugins import call_hook

    call_hook("register_commands", cli=cli)  # a plugin whose hook raises is reported, not fatal
    return cli


def main(argv: list[str] | None = None) -> None:
    # before any thread starts, so that every thread of the run or server shares the heap whose freed
    # memory the next layer reuses (recognize/heap.py)
    heap.keep_freed_memory()
    try:
        group = build_cli()
    except RecognizeError as exc:  # e.g. a broken plugin
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    group.main(args=argv, prog_name="recognize")
