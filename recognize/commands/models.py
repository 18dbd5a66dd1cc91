"""`recognize models list | download NAME... | path NAME [FILE]`: the weights cache from the shell."""

from __future__ import annotations

import json
from typing import Any

import click

from recognize import hub
from recognize.cli import RecognizeGroup
from recognize.errors import InputError, RecognizeError


def _card(name: str) -> hub.ModelCard:
    """The card called `name`; an unknown name is bad input (exit 2)."""
    try:
        return hub.get_card(name)
    except RecognizeError as exc:
        raise InputError(str(exc)) from None


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _card_status(card: hub.ModelCard) -> tuple[str, list[str]]:
    states = [hub.file_state(card, f.filename) for f in card.files]
    present = states.count("present")
    if present == len(states):
        summary = "present"
    elif "partial" in states:
        summary = f"partial ({present}/{len(states)} files)"
    elif present:
        summary = f"{present}/{len(states)} files"
    else:
        summary = "missing"
    return summary, states


def _card_json(card: hub.ModelCard) -> dict[str, Any]:
    summary, states = _card_status(card)
    return {
        "name": card.name,
        "description": card.description,
        "homepage": card.homepage,
        "license": card.license,
        "size": card.size,
        "status": summary,
        "files": [
            {
                "filename": f.filename,
                "url": f.url,
                "sha256": f.sha256,
                "size": f.size,
                "path": str(hub.file_path(card, f.filename)),
                "status": state,
            }
            for f, state in zip(card.files, states)
        ],
    }


@click.group("models", cls=RecognizeGroup)
def models() -> None:
    """Model weights and assets: list them, download them, show where they live."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
def list_models(as_json: bool) -> None:
    """Every registered model card: files, size, and whether it is in the cache."""
    from recognize.plugins import model_cards

    registered = model_cards()
    cards = [registered[name] for name in sorted(registered)]
    if as_json:
        click.echo(json.dumps({"cache": str(hub.cache_dir()), "models": [_card_json(c) for c in cards]}, indent=2))
        return
    rows = [("NAME", "FILES", "SIZE", "STATUS")]
    for card in cards:
        rows.append((card.name, str(len(card.files)), _human(card.size), _card_status(card)[0]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    click.echo(f"cache: {hub.cache_dir() / 'models'}")


@models.command("download")
@click.argument("names", nargs=-1)
@click.option("--recipe", "recipes", multiple=True, type=click.Path(dir_okay=False),
              help="Download every file this recipe's stages need with its parameters (repeatable).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def download_models(names: tuple[str, ...], recipes: tuple[str, ...], progress: bool) -> None:
    """Download (resuming partial files) and verify every file of each NAME, or of each --recipe.

    A recipe's stages declare the files they need (`Stage.model_files()`): its checkpoint, tag
    lists, vocabularies, CLIP weights..., except those a parameter points at a local file for.
    """
    if not names and not recipes:
        raise InputError("give model NAMEs or --recipe RECIPE (see `recognize models list`)")
    cards = [_card(name) for name in names]
    refs = [ref for recipe in recipes for ref in recipe_files(recipe)]
    for card in cards:
        for path in hub.download(card, progress=progress):
            click.echo(str(path))
    for path in hub.download_files(refs, progress=progress):
        click.echo(str(path))


def recipe_files(recipe: str) -> list[hub.FileRef]:
    """Every hub file the recipe's stages and outputs need with their parameters (building is cheap)."""
    from recognize.pipeline import Pipeline

    pipeline = Pipeline.from_recipe(recipe)
    return [ref for stage in [*pipeline.stages, *pipeline.outputs] for ref in stage.model_files()]


@models.command("path")
@click.argument("name")
@click.argument("filename", required=False)
def model_path(name: str, filename: str | None) -> None:
    """Print the cached path of NAME's files (or of FILE); exit 3 if one is missing."""
    card = _card(name)
    wanted = [card.file(filename)] if filename else list(card.files)
    paths = [hub.ensure_file(card, f.filename, download=False, progress=False) for f in wanted]
    for path in paths:
        click.echo(str(path))


def add_commands(cli: Any) -> None:
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(models)
