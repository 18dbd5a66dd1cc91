"""`recognize run RECIPE INPUT... -o OUT` and `recognize stages`."""

from __future__ import annotations

import json
import sys

import click

from recognize.errors import InputError


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "output", default="recognize-out", show_default=True,
              help="Folder for the results: per-image results in OUT/frames/, the recipe's dataset files, "
                   "summary.json. When OUT lies inside an input folder, it is skipped when that folder is scanned. "
                   "May be an fsspec URL (s3://bucket/run, gs://..., az://..., http(s)://...; install s3fs, gcsfs "
                   "or adlfs): the run stages files under RECOGNIZE_HOME and uploads finished ones as it goes "
                   "(docs/scale.md).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set stages.1.with.box_threshold=0.3 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs already exist (default: skip them).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch (overrides the recipe).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Where models run (overrides the recipe).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: Ray actors, and Ray Data for a partitioned dataset stage "
                   "(the cluster RAY_ADDRESS names, auto: one `ray start` runs on this machine; "
                   "else a new local Ray instance).")
def run_command(recipe, inputs, output, overrides, overwrite, quiet, batch_size, device, engine):
    """Run RECIPE on INPUTS (image files, folders searched recursively, globs, image URLs, list
    files (.txt: one path or URL per line) or manifests (.jsonl / .parquet with a path, url or
    source column and an optional name column)).

    Writes OUT/frames/<name>.json per image (the Frame schema; <name> is the image's path
    relative to its input folder), or, with a `shards` output and no `json` output, JSONL or
    Parquet shards in OUT/shards/ instead; the recipe's outputs and OUT/summary.json. Unreadable images
    are reported and skipped (exit code 1). An image already finished in OUT from the same
    source file with the same recipe is skipped, so an interrupted run resumes where it stopped;
    a changed source is processed again.
    """
    from recognize.pipeline import Pipeline
    from recognize.recipe import load_recipe
    from recognize.remote_output import run_to_output

    loaded = load_recipe(recipe, list(overrides))
    # set on the loaded recipe, not as `--set settings...`: a recipe without `settings:` takes them too
    changes = {key: value for key, value in (("batch_size", batch_size), ("device", device)) if value is not None}
    if changes:
        loaded.settings = loaded.settings.model_copy(update=changes)
    pipeline = Pipeline.from_recipe(loaded)
    engine_obj = None
    if engine == "ray":
        try:
            import ray.data  # noqa: F401 - the engine imports it when the run starts; say it now, in one line
        except ImportError as exc:
            raise InputError(f"--engine ray needs Ray Data ({exc.name or 'ray'} is missing): "
                             "pip install 'recognize[ray]'") from None
        from recognize.engines.ray_engine import RayEngine

        engine_obj = RayEngine(progress=not quiet)
    from recognize.engines.timing import seconds_since_process_start

    summary = run_to_output(pipeline, inputs, output, overwrite=overwrite, quiet=quiet, engine=engine_obj,
                            startup_seconds=seconds_since_process_start())
    parts = [f"{summary.processed} processed", f"{summary.skipped} already done", f"{summary.failed} failed"]
    click.echo(f"{', '.join(parts)} -> {output}", err=True)
    if summary.failed:
        sys.exit(1)


@click.command("stages")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stages_command(name, as_json):
    """List the stages a recipe can use, or show one stage's parameters.

    NAME is a stage's name, or `PLUGIN:NAME` where two plugins register one name.
    Each parameter is shown with its type, allowed values and default.
    """
    from recognize import plugins

    if name:
        cls = plugins.get_stage(name)
        _show_stage(name, cls, as_json)
        return
    rows = [{"name": shown, "kind": c.kind, "scope": c.scope, "summary": (c.__doc__ or "").strip().split("\n")[0]}
            for shown, c in sorted(plugins.stages().items())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<22} {row['kind']:<10} {row['summary']}")


def _show_stage(name, cls, as_json):
    from recognize.commands.param_words import describe_field, type_words

    fields = cls.Params.model_fields
    if as_json:
        params = {field: {"type": type_words(info.annotation), "required": info.is_required(),
                          "default": None if info.is_required() else _json_default(info),
                          "description": info.description} for field, info in fields.items()}
        click.echo(json.dumps({"name": name, "kind": cls.kind, "scope": cls.scope, "params": params,
                               "schema": cls.Params.model_json_schema()}, indent=2))
        return
    click.echo(f"{name} ({cls.kind}, {cls.scope} scope)")
    doc = (cls.__doc__ or "").strip().splitlines()
    if doc:
        click.echo(f"  {doc[0]}")
    if not fields:
        click.echo("  no parameters")
    for field, info in fields.items():
        click.echo(f"  {describe_field(field, info)}")


def _json_default(info):
    from pydantic import TypeAdapter

    return TypeAdapter(object).dump_python(info.get_default(call_default_factory=True), mode="json")


def add_commands(cli):
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(run_command)
    cli.add_command(stages_command)
