"""`recognize eval tags`, `recognize eval regions` (benchmark a recipe's results) and
`recognize eval compare` (how far two recipes' results are apart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click



def _progress(quiet: bool, desc: str):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, unit="img", disable=quiet, leave=False)


def _overrides(overrides: tuple[str, ...], batch_size: int | None, device: str | None) -> list[str]:
    result = list(overrides)
    if batch_size is not None:
        result.append(f"settings.batch_size={batch_size}")
    if device is not None:
        result.append(f"settings.device={device}")
    return result


def _write_list(path: Path, lines: list[str]) -> None:
    from recognize.atomic import write_text

    write_text(path, "".join(f"{line}\n" for line in lines))


def _warn_left_out(what: str, items: list[str], total: int, where: str, listing: Path) -> None:
    if items:
        click.echo(f"warning: {len(items)} of {total} annotated images {what} {where} (first: {items[0]!r}); "
                   f"they are not scored; all listed in {listing}", err=True)


_recipe_options = [
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override a recipe value, e.g. --set stages.0.with.threshold=0.7 (repeatable)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
                 help="Where models run (overrides the recipe)."),
    click.option("-o", "--output", type=click.Path(file_okay=False), default="recognize-eval", show_default=True,
                 help="Folder for the per-class CSV / summary JSON."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


def recipe_options(func):
    for option in reversed(_recipe_options):
        func = option(func)
    return func


@click.group("eval")
def eval_group() -> None:
    """Score a recipe on a benchmark: tags (mAP, CP/CR/F1) or regions (COCO box and mask AP)."""


@eval_group.command("tags")
@click.option("--recipe", required=True, type=click.Path(dir_okay=False), help="Recipe with the tagger to score.")
@click.option("--images", "images", required=True, type=click.Path(file_okay=False),
              help="Folder holding the annotated images.")
@click.option("--annotations", required=True, type=click.Path(dir_okay=False),
              help="Official annotation file: `image,tag,tag...` (names, Tag2Text ids, or `image,3 17` positions).")
@click.option("--taglist", required=True, type=click.Path(dir_okay=False),
              help="Official taglist: one class name (or Tag2Text tag id) per line.")
@click.option("--stage", default=None, help="Name of the stage to score (default: the recipe's first tagger).")
@click.option("--open-set", is_flag=True,
              help="Make the tagger recognise exactly the taglist's classes (its `tags` parameter; RAM++ also "
                   "gets `<dataset>_llm_tag_descriptions.json` from beside the taglist).")
@click.option("--descriptions", type=click.Path(dir_okay=False), default=None,
              help="RAM++ LLM tag descriptions JSON for --open-set (default: found beside the taglist).")
@click.option("--require-all-images", is_flag=True,
              help="Fail (exit 2) when an annotated image is not in the folder, instead of scoring the rest.")
@recipe_options
def tags_command(recipe, images, annotations, taglist, stage, open_set, descriptions, require_all_images,
                 overrides, batch_size, device, output, quiet):
    """mAP and CP/CR/CF1/OP/OR/OF1 of a recipe's tagger on an official tagging benchmark.

    mAP uses every class's score; CP/CR/... use the tagger's own per-class thresholds
    (score >= threshold, as the official batch_inference.py). Writes OUT/tags_per_class.csv
    (AP, precision and recall per class, in percent) and OUT/tags_summary.json.
    """
    from recognize.eval.tags import evaluate_tags, find_tagger, open_set_overrides
    from recognize.pipeline import Pipeline

    settings = _overrides(overrides, batch_size, device)
    if open_set:
        settings += open_set_overrides(recipe, taglist, stage=stage, descriptions=descriptions, overrides=settings)
    pipeline = Pipeline.from_recipe(recipe, settings)
    tagger = find_tagger(pipeline.stages, stage)
    result = evaluate_tags(tagger, images, annotations, taglist, batch_size=batch_size,
                           progress=_progress(quiet, f"scoring with {tagger.name}"),
                           require_all=require_all_images)

    out = Path(output)
    summary: dict[str, Any] = {"recipe": str(recipe), "images_dir": str(images), "open_set": open_set,
                               **result.summary()}
    listed = len(result.annotations.images)
    if result.missing:
        _write_list(out / "tags_missing_images.txt", result.missing)
        _warn_left_out("are not in", result.missing, listed, str(images), out / "tags_missing_images.txt")
    if result.unreadable:
        _write_list(out / "tags_unreadable_images.txt", [f"{n}\t{r}" for n, r in result.unreadable])
        _warn_left_out("could not be read in", [n for n, _ in result.unreadable], listed, str(images),
                       out / "tags_unreadable_images.txt")
    result.write_per_class_csv(out / "tags_per_class.csv")
    from recognize.atomic import write_text

    write_text(out / "tags_summary.json", json.dumps(summary, indent=2) + "\n")

    m = result.metrics.summary()
    empty = summary["classes_without_positives"]
    click.echo(f"images: {len(result.evaluated)} of {listed} scored; classes: {len(result.taglist)}")
    line = f"mAP: {m['mAP'] * 100:.2f}"
    if empty:
        has = "class has" if empty == 1 else "classes have"
        line += (f"  ({empty} {has} no positive image and count as AP 0, as officially; "
                 f"mAP over the others: {m['mAP_classes_with_positives'] * 100:.2f})")
    click.echo(line)
    click.echo(f"CP: {m['CP'] * 100:.2f}  CR: {m['CR'] * 100:.2f}  CF1: {m['CF1'] * 100:.2f}")
    click.echo(f"OP: {m['OP'] * 100:.2f}  OR: {m['OR'] * 100:.2f}  OF1: {m['OF1'] * 100:.2f}")
    click.echo(f"per-class AP: {out / 'tags_per_class.csv'}", err=True)


@eval_group.command("regions")
@click.option("--annotations", required=True, type=click.Path(dir_okay=False),
              help="COCO instances JSON (boxes; `segmentation` too for mask AP).")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="Recipe to run on the ground truth's images (needs --images).")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Folder the ground truth's `file_name`s are relative to.")
@click.option("--predictions", type=click.Path(file_okay=False), default=None,
              help="Instead of --recipe: the output folder of an earlier `recognize run` (its Frame JSONs).")
@click.option("--iou-type", type=click.Choice(["auto", "bbox", "segm", "both"]), default="auto", show_default=True,
              help="auto: boxes, plus masks when the predictions have masks.")
@recipe_options
def regions_command(annotations, recipe, images, predictions, iou_type, overrides, batch_size, device, output, quiet):
    """COCO box and mask AP/AR (pycocotools COCOeval) of a recipe's regions.

    Frames match ground truth images by file name, region tags match categories by name.
    Writes OUT/regions_summary.json.
    """
    from recognize.errors import InputError
    from recognize.eval.regions import evaluate_regions, load_ground_truth, read_frames, run_on_ground_truth

    if (recipe is None) == (predictions is None):
        raise InputError("give either --recipe (with --images) or --predictions")
    unreadable: list[tuple[str, str]] = []
    coco = None
    if recipe is not None:
        if images is None:
            raise InputError("--recipe needs --images, the folder of the ground truth's images")
        from recognize.pipeline import Pipeline

        pipeline = Pipeline.from_recipe(recipe, _overrides(overrides, batch_size, device))
        coco = load_ground_truth(annotations)  # read once, for the run and for the scoring
        frames, _, unreadable = run_on_ground_truth(pipeline, annotations, images,
                                                    progress=_progress(quiet, "running recipe"), coco=coco)
    else:
        frames = read_frames(predictions)
    types = {"auto": None, "bbox": ["bbox"], "segm": ["segm"], "both": ["bbox", "segm"]}[iou_type]
    result = evaluate_regions(frames, annotations, images_dir=images, iou_types=types, coco=coco)
    bad = {name for name, _ in unreadable}
    result.unreadable = unreadable
    result.missing = [name for name in result.missing if name not in bad]

    out = Path(output)
    from recognize.atomic import write_text

    where = str(images) if recipe is not None else str(predictions)
    total = result.images_in_ground_truth
    if result.missing:
        _write_list(out / "regions_missing_images.txt", result.missing)
        _warn_left_out("have no prediction from", result.missing, total, where, out / "regions_missing_images.txt")
    if unreadable:
        _write_list(out / "regions_unreadable_images.txt", [f"{n}\t{r}" for n, r in unreadable])
        _warn_left_out("could not be read in", sorted(bad), total, where, out / "regions_unreadable_images.txt")
    if result.unmatched_frames:
        click.echo(f"warning: {len(result.unmatched_frames)} predictions name no ground truth image "
                   f"(first: {result.unmatched_frames[0]!r})", err=True)
    if result.unknown_tags:
        top = ", ".join(f"{tag!r} x{n}" for tag, n in sorted(result.unknown_tags.items(), key=lambda kv: -kv[1])[:5])
        click.echo(f"warning: {sum(result.unknown_tags.values())} regions have a tag that is no ground truth "
                   f"category and are not scored ({top})", err=True)
    write_text(out / "regions_summary.json",
               json.dumps({"annotations": str(annotations), "recipe": recipe, "predictions": predictions,
                           **result.summary()}, indent=2) + "\n")
    click.echo(f"images: {result.images_evaluated} of {total} evaluated; regions: {result.regions}")
    for kind, report in result.reports.items():
        click.echo(f"{'boxes' if kind == 'bbox' else 'masks'} ({kind}):")
        click.echo(report.rstrip("\n"))


@eval_group.command("compare")
@click.argument("side_a", metavar="A")
@click.argument("side_b", metavar="B")
@click.argument("inputs", nargs=-1, metavar="IMAGES...")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="recognize-compare", show_default=True,
              help="Folder for compare.json and, for recipes, each side's run (OUT/a, OUT/b).")
@click.option("--match-iou", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Boxes of one tag with a lower IoU are not paired.")
@click.option("--set-a", "overrides_a", multiple=True, metavar="KEY=VALUE", help="Override a value of recipe A.")
@click.option("--set-b", "overrides_b", multiple=True, metavar="KEY=VALUE", help="Override a value of recipe B.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch (both recipes).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Where models run (both recipes).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def compare_command(side_a, side_b, inputs, output, match_iou, overrides_a, overrides_b, batch_size, device, quiet):
    """Compare two recipes' results on the same images, with A as the reference.

    A and B are recipe files (both are run on IMAGES into OUT/a and OUT/b, one after the other)
    or folders of earlier `recognize run`s. Per image and overall: tag agreement (Jaccard), the
    largest tag score difference, boxes paired per tag (Hungarian on IoU): mean IoU of paired
    boxes, unpaired counts, largest score difference; mean mask IoU of paired regions; and each
    side's seconds per image. Writes OUT/compare.json. Use it to judge a fast mode on your photos:

      recognize eval compare recipe.yaml recipe.yaml photos/ --set-b stages.2.with.dtype=bfloat16
    """
    from recognize.atomic import write_text
    from recognize.errors import InputError
    from recognize.eval.compare import compare_runs, format_table, run_summary, side_source
    from recognize.eval.regions import read_frames

    out = Path(output)
    kinds = [side_source(side_a), side_source(side_b)]
    if "recipe" in kinds and not inputs:
        raise InputError("a recipe needs IMAGES to run on (files, folders or globs)")
    if inputs and "recipe" not in kinds:
        click.echo("warning: A and B are both run folders; IMAGES are not used", err=True)
    folders = []
    for label, side, kind, overrides in (("a", side_a, kinds[0], overrides_a), ("b", side_b, kinds[1], overrides_b)):
        if kind == "run folder":
            folders.append(Path(side))
            continue
        from recognize.pipeline import Pipeline
        from recognize.runner import run_to_folder
        from recognize.stage import shared_models

        pipeline = Pipeline.from_recipe(side, _overrides(overrides, batch_size, device))
        if not quiet:
            click.echo(f"{label.upper()}: running {side} into {out / label}", err=True)
        summary = run_to_folder(pipeline, inputs, out / label, overwrite=True, quiet=quiet)
        if summary.failed:
            click.echo(f"warning: {label.upper()}: {summary.failed} image(s) failed (see {out / label / 'summary.json'})",
                       err=True)
        shared_models.clear()  # the other side may need other models: never hold both sides' weights
        folders.append(out / label)

    comparison = compare_runs(read_frames(folders[0]), read_frames(folders[1]), match_iou=match_iou)
    if not comparison.images:
        raise InputError(f"{folders[0]} and {folders[1]} have no image in common")
    for side, names in (("A", comparison.only_a), ("B", comparison.only_b)):
        if names:
            click.echo(f"warning: {len(names)} image(s) only in {side} are not compared (first: {names[0]!r})", err=True)
    speed = {"a": {"source": str(side_a), **run_summary(folders[0])}, "b": {"source": str(side_b), **run_summary(folders[1])}}
    write_text(out / "compare.json", json.dumps({**speed, **comparison.to_dict()}, indent=2) + "\n")
    click.echo(format_table(comparison))
    for label in ("a", "b"):
        s = speed[label]
        modes = "; ".join(f"{k} " + " ".join(f"{n}={v}" for n, v in m.items()) for k, m in s.get("fast_modes", {}).items())
        per_image = s.get("stage_seconds_per_image")
        click.echo(f"{label.upper()}: {s['source']}: "
                   f"{'-' if per_image is None else f'{per_image:.3f}'} s/img in stages"
                   f"{'; fast modes: ' + modes if modes else ''}")
    click.echo(f"written: {out / 'compare.json'}", err=True)


def add_commands(cli: Any) -> None:
    """Called by `recognize.commands.builtin` when the CLI is built."""
    cli.add_command(eval_group)
