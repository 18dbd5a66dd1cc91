"""The chain benchmark's reference: one run of Grounded-SAM's `automatic_label_ram_demo.py`, for one photo.

    <official venv>/bin/python reference_demo.py SPEC.json PHOTO OUT_DIR

Runs in the official Grounding DINO environment (`official_env.py`: rf-groundingdino with
transformers<5, `--system-site-packages`, so segment_anything, matplotlib and recognize import too),
once per photo, as the demo is used: a fresh process that imports everything, builds and loads every
model and writes the demo's files. The steps, in the demo's order:

1. read the photo with PIL and transform it for Grounding DINO (RandomResize [800], max 1333, normalise);
2. build the official Grounding DINO (`build_model(SLConfig)`, or the tiny test sizes) and load the
   checkpoint (`torch.load` + `load_state_dict(clean_state_dict(ckpt["model"]), strict=False)`);
   save `raw_image.jpg`;
3. build RAM++ and load its checkpoint (our parity-proven classes: the official RAM code is not on the
   package index; built with its random init and then loaded, as the official `ram_plus(pretrained=)`
   does, not with our stage's meta-device load), resize the PIL photo to 384x384, tag; the tags joined
   with `", "` are the caption (the demo's `res[0].replace(' |', ',')`);
4. Grounding DINO on the caption: boxes over `box_threshold`, phrases from the token map with the
   score appended (`"cat(0.41)"`);
5. build SAM (`segment_anything`'s builder loading the checkpoint), read the photo again (cv2, BGR ->
   RGB), `SamPredictor.set_image`; boxes to pixels xyxy, torchvision NMS at `iou_threshold`;
   `predictor.transform.apply_boxes_torch` + `predict_torch(multimask_output=False)`;
6. the matplotlib figure (10x10 in: the photo, every mask as an RGBA overlay of a random colour,
   every box with its label), `savefig(automatic_label_output.jpg, dpi=300, bbox_inches="tight")`;
   then the demo's `save_mask_data`: the label image as a second figure (`mask.jpg`, dpi 300) and
   `label.json` (background + value/label/logit/box per mask).

Device: `spec["device"]` (default `cpu`), as the demo's `--device`: each model goes there as the demo
moves it (Grounding DINO and its pixels at inference, RAM++ and SAM after loading), NMS runs on the CPU
and the masks come back with `.cpu()` for drawing, as in the demo. On a GPU each timed part ends with a
`torch.cuda.synchronize` once CUDA has started (not before: the first wait would start it, and its start-up
belongs where the demo first touches the GPU, `load_ram`), so that work queued in one part (SAM's decoding)
is not counted in the next (the drawing's first `.cpu()`); the process's wall time is the same either way.
Like the demo, it keeps torch's defaults there (cuDNN may use TF32 for the convolutions; our exact runs do
not). rf-groundingdino, the official code on the package index, computes deformable attention in PyTorch on
a GPU too, where an upstream GroundingDINO built with its CUDA extension calls that kernel instead.

Deliberate differences from the demo, all to make both sides of the benchmark do equal work: the
tags are the fixed `spec["tags"]` (RAM++'s scores over every class at threshold `tag_threshold`,
then only those names kept), the boxes after NMS are cut to `spec["max_boxes"]` (the best ones:
torchvision's NMS returns them by decreasing score), and the ChatGPT tag revision is off (the demo
skips it without an API key, as here). Matplotlib renders with Agg (no display).

Prints one JSON line on stdout: seconds of each part (`startup`: process start to the end of the
imports; `load_*`; `decode`; `ram`; `grounding_dino`; `sam`; `draw_save`), `cold_start` (process
start to RAM++ starting on the photo: the first model running), the counts, and the process's peak
RSS (`VmHWM`). Everything else the demo prints goes to stderr.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()


def _age() -> float:
    """Seconds since this process was created (Linux /proc): so `startup` includes the interpreter."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


_AGE0 = _age()


def _now() -> float:
    """Seconds since process start."""
    return _AGE0 + time.perf_counter() - _T0


import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cv2
import groundingdino.datasets.transforms as T
import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
import torchvision.transforms as TS
from groundingdino.util.utils import clean_state_dict, get_phrases_from_posmap
from official_gdino_worker import build as build_grounding_dino
from PIL import Image
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.build_sam import _build_sam

from recognize.taggers.checkpoint import load_official
from recognize.taggers.ram import build_model as build_ram
from recognize.taggers.ram_stages import RamPlus

IMPORTED = _now()


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Clock:
    """Seconds per named part, summed (a part may be entered more than once). `device`: where the models
    compute; on a GPU a part ends when the work it queued has finished."""

    def __init__(self, device: str = "cpu") -> None:
        self.parts: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        where = torch.device(device)
        self.sync = ((lambda: torch.cuda.synchronize(where) if torch.cuda.is_initialized() else None)
                     if where.type == "cuda" else (lambda: None))

    def part(self, name: str):
        clock = self

        class _Part:
            def __enter__(self) -> None:
                self.start = _now()
                clock.marks.setdefault(name, self.start)

            def __exit__(self, *exc: object) -> None:
                clock.sync()
                clock.parts[name] = clock.parts.get(name, 0.0) + _now() - self.start

        return _Part()


# -- the demo's steps, each written for this benchmark -------------------------------------------
def read_for_grounding(path: str, size: int, max_size: int) -> tuple[Image.Image, torch.Tensor]:
    photo = Image.open(path).convert("RGB")
    transform = T.Compose([T.RandomResize([size], max_size=max_size), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    pixels, _ = transform(photo, None)
    return photo, pixels


def load_grounding_dino(spec: dict, device: str) -> torch.nn.Module:
    model = build_grounding_dino({**spec, "device": device})  # the demo's `args.device = device`
    checkpoint = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    log(model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False))
    return model.eval()


def load_ram(params: dict, device: str) -> tuple[torch.nn.Module, list[str], list[str] | None, np.ndarray]:
    stage = RamPlus({**params, "device": "cpu"})  # only its files and config: it loads nothing itself
    model = build_ram(stage.ram_config())  # random init, then the checkpoint (the official way)
    load_official(model, stage.checkpoint_path(), model.key_spec())
    vocab = stage.closed_vocabulary()
    return model.eval().to(device), vocab.names, vocab.names_zh, np.asarray(vocab.thresholds)


def tag(model: torch.nn.Module, names: list[str], names_zh: list[str] | None, thresholds: np.ndarray,
        photo: Image.Image, size: int, keep: list[str] | None, threshold: float | None) -> tuple[str, str]:
    transform = TS.Compose([TS.Resize((size, size)), TS.ToTensor(),
                            TS.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    device = next(model.parameters()).device
    pixels = transform(photo.resize((size, size)))[None].to(device)
    with torch.no_grad():
        scores = torch.sigmoid(model(pixels))[0].cpu().numpy()
    limit = np.full_like(thresholds, threshold) if threshold is not None else thresholds
    hits = [i for i in np.flatnonzero(scores > limit) if keep is None or names[i] in keep]
    english = " | ".join(names[i] for i in hits)
    chinese = " | ".join((names_zh or names)[i] for i in hits)
    return english.replace(" |", ","), chinese.replace(" |", ",")


def ground(model: torch.nn.Module, pixels: torch.Tensor, caption: str, box_threshold: float,
           text_threshold: float, device: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    caption = caption.lower().strip()
    if not caption.endswith("."):
        caption += "."
    model = model.to(device)
    with torch.no_grad():
        outputs = model(pixels.to(device)[None], captions=[caption])
    logits = outputs["pred_logits"].cpu().sigmoid()[0]
    boxes = outputs["pred_boxes"].cpu()[0]
    kept = logits.max(dim=1)[0] > box_threshold
    logits, boxes = logits[kept], boxes[kept]
    tokenized = model.tokenizer(caption)
    phrases, scores = [], []
    for row in logits:
        score = row.max().item()
        phrase = get_phrases_from_posmap(row > text_threshold, tokenized, model.tokenizer)
        phrases.append(f"{phrase}({str(score)[:4]})")
        scores.append(score)
    return boxes, torch.tensor(scores), phrases


def load_sam(params: dict, device: str) -> SamPredictor:
    config = params.get("config")
    if config is not None:  # the tiny test sizes: segment_anything's own builder at those sizes
        model = _build_sam(checkpoint=params["checkpoint"], **config)
    else:
        model = sam_model_registry[params["model"]](checkpoint=params["checkpoint"])
    return SamPredictor(model.to(device))


def to_pixel_xyxy(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    cx, cy, w, h = (boxes * torch.tensor([width, height, width, height])).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def overlay(mask: np.ndarray, axes) -> None:
    """One mask as an RGBA image of a random colour at alpha 0.6 over the photo (full resolution)."""
    colour = np.concatenate([np.random.random(3), [0.6]])
    height, width = mask.shape[-2:]
    axes.imshow(mask.reshape(height, width, 1) * colour.reshape(1, 1, -1))


def outline(box: np.ndarray, axes, label: str) -> None:
    x0, y0, x1, y1 = box
    axes.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, edgecolor="green", facecolor=(0, 0, 0, 0), lw=2))
    axes.text(x0, y0, label)


def draw(image: np.ndarray, masks: torch.Tensor, boxes: torch.Tensor, labels: list[str], out: Path) -> None:
    plt.figure(figsize=(10, 10))
    plt.imshow(image)
    for mask in masks:
        overlay(mask.cpu().numpy(), plt.gca())
    for box, label in zip(boxes, labels):
        outline(box.numpy(), plt.gca(), label)
    plt.axis("off")
    plt.savefig(out / "automatic_label_output.jpg", bbox_inches="tight", dpi=300, pad_inches=0.0)


def save_mask_data(out: Path, tags_chinese: str, masks: torch.Tensor, boxes: torch.Tensor, labels: list[str]) -> None:
    label_image = torch.zeros(masks.shape[-2:])
    for index, mask in enumerate(masks):
        label_image[mask.cpu().numpy()[0]] = index + 1
    plt.figure(figsize=(10, 10))
    plt.imshow(label_image.numpy())
    plt.axis("off")
    plt.savefig(out / "mask.jpg", bbox_inches="tight", dpi=300, pad_inches=0.0)
    entries = [{"value": 0, "label": "background"}]
    for value, (label, box) in enumerate(zip(labels, boxes), start=1):
        name, score = label.split("(")
        entries.append({"value": value, "label": name, "logit": float(score[:-1]), "box": box.numpy().tolist()})
    (out / "label.json").write_text(json.dumps({"tags_chinese": tags_chinese, "mask": entries}))


def run(spec: dict, photo_path: str, out: Path) -> dict:
    device = spec.get("device", "cpu")
    clock = Clock(device)
    out.mkdir(parents=True, exist_ok=True)
    size, max_size = spec["grounding_dino_size"]
    with clock.part("decode"):
        photo, pixels = read_for_grounding(photo_path, size, max_size)
    with clock.part("load_grounding_dino"):
        grounding_dino = load_grounding_dino(spec["grounding_dino"], device)
    with clock.part("draw_save"):
        photo.save(out / "raw_image.jpg")
    with clock.part("load_ram"):
        ram, names, names_zh, thresholds = load_ram(spec["ram_plus"], device)
    with clock.part("ram"):
        tags, tags_chinese = tag(ram, names, names_zh, thresholds, photo, ram.config.image_size,
                                 spec.get("tags"), spec.get("tag_threshold"))
    log("Image Tags:", tags)
    with clock.part("grounding_dino"):
        boxes, scores, phrases = ground(grounding_dino, pixels, tags, spec["box_threshold"], spec["text_threshold"],
                                        device)
    with clock.part("load_sam"):
        predictor = load_sam(spec["sam"], device)
    with clock.part("decode"):
        image = cv2.cvtColor(cv2.imread(photo_path), cv2.COLOR_BGR2RGB)
    with clock.part("sam"):
        predictor.set_image(image)
        width, height = photo.size
        boxes = to_pixel_xyxy(boxes, width, height)
        log(f"Before NMS: {boxes.shape[0]} boxes")
        kept = torchvision.ops.nms(boxes, scores, spec["iou_threshold"]).tolist()[: spec.get("max_boxes")]
        boxes, phrases = boxes[kept], [phrases[i] for i in kept]
        log(f"After NMS: {boxes.shape[0]} boxes")
        prompts = predictor.transform.apply_boxes_torch(boxes, image.shape[:2]).to(device)
        masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=prompts,
                                              multimask_output=False)
    with clock.part("draw_save"):
        draw(image, masks, boxes, phrases, out)
        save_mask_data(out, tags_chinese, masks, boxes, phrases)
    return {
        "startup": IMPORTED,
        "parts": clock.parts,
        "cold_start": clock.marks["ram"],
        "seconds": _now(),
        "tags": len([t for t in tags.split(", ") if t]),
        "boxes": int(boxes.shape[0]),
        "masks": int(masks.shape[0]),
        "threads": torch.get_num_threads(),
        "device": device,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> None:
    spec_path, photo, out = argv
    result = run(json.loads(Path(spec_path).read_text()), photo, Path(out))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
