"""The baseline: the same work done the way the reference Grounded-SAM demo does it.

The demo (`automatic_label_ram_demo.py`) is a script run once per image: it builds and loads every
model, tags the image with RAM/RAM++ at batch 1, joins all tags into one Grounding DINO caption
(`"a, b, c."`, cut by the tokenizer at 256 tokens), keeps boxes over the box threshold, runs NMS,
then `SamPredictor.set_image` + `predict_torch` on all boxes, in plain fp32 eager PyTorch.

RAM/RAM++/Tag2Text and SAM use the very model classes and checkpoint files our stages use (the
official RAM code is not on the package index; SAM's is `segment_anything`'s own). Grounding DINO
runs the official model code (rf-groundingdino) by default, in a process of its own in its own venv
(`official_env.py`, `official_gdino_worker.py`), since it needs transformers<5: `load` starts that
process, which builds and loads the model as the demo does (so load includes a process start, as
the demo's per-photo script does), `infer` sends it one photo. Its checkpoint is the same
architecture with seeded random weights written by the official code in the official layout.
Each function builds its model from the file (load) and runs it on one image (infer); the caller
times the two apart. On `run.py --device cuda` the same steps run on the GPU (the model moved there
after loading, as the demo does with `.to(device)`), and Grounding DINO's baseline is our model classes
unless `--gdino-baseline official` asks for the official code there (a GPU machine often has no package
index: its venv is then built from `$RECOGNIZE_ORACLE_WHEELS`, see `official_env.py`).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from bench_models import Kit

Loader = Callable[[], Any]
Runner = Callable[[Any, np.ndarray], Any]


# -- taggers ----------------------------------------------------------------------------------------
def tagger(kit: Kit, stage: str, include: tuple[str, ...] | None = None, threshold: float | None = None):
    """(load, infer) for RAM / RAM++ / Tag2Text: `generate_tag` on one image at batch 1."""
    from recognize import plugins
    from recognize.taggers.preprocess import preprocess

    params = {**kit.tagger_params(stage), "device": "cpu"}
    spec = plugins.get_stage(stage)(params)  # only for its file paths and config: no model is loaded by it
    device = kit.device

    def load() -> Any:
        model = spec.build_model().eval().requires_grad_(False)
        vocab = spec.build_vocabulary(model)
        model = model.to(device)
        names, thresholds = vocab.names, torch.as_tensor(vocab.thresholds, device=device)
        if threshold is not None:
            thresholds = torch.full_like(thresholds, threshold)
        return model, names, thresholds

    def infer(loaded: Any, image: np.ndarray) -> list[str]:
        model, names, thresholds = loaded
        with torch.no_grad():
            scores = torch.sigmoid(model(preprocess([image], spec.image_size).to(device)))[0]
        hits = torch.nonzero(scores > thresholds).flatten().tolist()
        if include is not None:
            hits = [i for i in hits if names[i] in include]
        return [names[i] for i in hits]

    return load, infer


# -- Grounding DINO ---------------------------------------------------------------------------------
class OfficialWorker:
    """One official Grounding DINO process, loaded (`official_gdino_worker.py serve`: one photo, the demo's
    way). Its exit (on a GPU: tearing the CUDA context down) is waited for when this object goes away,
    which `bench_jobs.stage_pair` does outside its timers, not inside the timed inference: the stage
    table's baseline seconds are its load (a process start included) and its inference, its exit in
    neither. `peak_device_mb`: that process's own peak GPU memory once it has answered (None on the CPU)."""

    #: seconds to wait for a worker to exit once its input is closed, before it is killed
    EXIT_TIMEOUT = 120.0

    def __init__(self, proc: Any, errors: Any) -> None:
        self.proc, self.errors = proc, errors
        self.peak_device_mb: float | None = None

    def _end(self) -> None:
        """Close its input (a worker waiting for a job then exits) and wait; kill one that does not end."""
        with contextlib.suppress(OSError, ValueError):  # closed already, or a broken pipe
            self.proc.stdin.close()
        try:
            self.proc.wait(self.EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def error_text(self, seen: str = "") -> str:
        """What the worker wrote to stderr (after `seen`, an unexpected stdout line), once it has ended."""
        self._end()
        self.errors.seek(0)
        said = [self.errors.read().strip()[-3000:], f"(its stdout: {seen.strip()[:500]})" if seen.strip() else ""]
        return "; ".join(part for part in said if part) or "(it said nothing)"

    def close(self) -> None:
        self._end()
        for stream in (self.proc.stdout, self.errors):
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the modules it needs may be gone; the OS reaps the process
            pass


def official_grounding_dino(kit: Kit, box_threshold: float = 0.25, text_threshold: float = 0.2):
    """(load, infer(image, tags)) through the official code in its own process (see module docstring)."""
    import json
    import tempfile
    from pathlib import Path

    from bench_models import official_worker_env
    from official_env import official_python

    python = official_python()
    spec = kit.official_gdino_spec()
    script = Path(__file__).resolve().parent / "official_gdino_worker.py"
    short, long = kit.gd_size

    def load() -> Any:
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([str(python), str(script), "serve", str(spec)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, text=True, env=official_worker_env())
        worker = OfficialWorker(proc, errors)
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"official Grounding DINO failed to load: {worker.error_text(line)}")
        return worker

    def infer(worker: OfficialWorker, image: np.ndarray, tags: list[str]) -> tuple[np.ndarray, list[str]]:
        proc = worker.proc
        with tempfile.NamedTemporaryFile(suffix=".npy", delete=False) as file:
            np.save(file, image)
        job = {"image": file.name, "tags": list(tags), "box_threshold": box_threshold,
               "text_threshold": text_threshold, "size": short, "max_size": long}
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError:  # the worker is gone (a broken pipe): what it said is the message
            line = ""
        finally:
            Path(file.name).unlink()
        try:
            found = json.loads(line)
        except ValueError:
            raise RuntimeError(f"official Grounding DINO failed: {worker.error_text(line)}") from None
        worker.peak_device_mb = found.get("peak_device_mb")
        return np.asarray(found["boxes"], dtype=np.float32).reshape(-1, 4), found["phrases"]

    return load, infer


def grounding_dino(kit: Kit, box_threshold: float = 0.25, text_threshold: float = 0.2):
    """(load, infer(image, tags)) as the demo: one caption of all tags, truncated at 256 tokens.

    The official code unless the kit says otherwise; this function's own body is the same steps on
    our transformers-based model classes (`--gdino-baseline ours`)."""
    if kit.official_gdino:
        return official_grounding_dino(kit, box_threshold, text_threshold)
    import torchvision
    from recognize_grounding_dino.model import build_config, build_model, load_tokenizer
    from recognize_grounding_dino.transforms import preprocess

    params = kit.gd_params()
    short, long = kit.gd_size
    device = kit.device

    def load() -> Any:
        model = build_model(build_config(params["model"], params.get("config")), init_weights=False)
        model.load_state_dict(torch.load(params["checkpoint"], map_location="cpu", weights_only=True), strict=False)
        return model.eval().to(device), load_tokenizer(params["vocab"])

    def infer(loaded: Any, image: np.ndarray, tags: list[str]) -> tuple[np.ndarray, list[str]]:
        model, tokenizer = loaded
        caption = ", ".join(tags).lower().strip()
        caption = caption if caption.endswith(".") else caption + "."
        tokens = tokenizer(caption, truncation=True, max_length=256, return_tensors="pt")
        pixels = preprocess(image, short, long)[None].to(device)
        with torch.no_grad():
            out = model(pixel_values=pixels, input_ids=tokens["input_ids"].to(device),
                        attention_mask=tokens["attention_mask"].to(device),
                        token_type_ids=tokens["token_type_ids"].to(device))
        logits = out.logits[0].sigmoid()[:, : tokens["input_ids"].shape[1]].cpu()
        keep = logits.max(dim=1).values > box_threshold
        logits, boxes = logits[keep], out.pred_boxes[0].cpu()[keep]
        ids = tokens["input_ids"][0]
        phrases = [tokenizer.decode(ids[row > text_threshold]) for row in logits]
        height, width = image.shape[:2]
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale
        kept = torchvision.ops.nms(xyxy, logits.max(dim=1).values, 0.5).tolist()
        return xyxy[kept].numpy(), [phrases[i] for i in kept]

    return load, infer


# -- SAM --------------------------------------------------------------------------------------------
def sam(kit: Kit):
    """(load, infer(image, boxes)): `SamPredictor.set_image` + `predict_torch` on every box at once."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam, sam_model_registry

    params = kit.sam_params()
    config = params.get("config")
    device = kit.device

    def load() -> Any:
        if config is not None:
            model = _build_sam(encoder_embed_dim=config["encoder_embed_dim"], encoder_depth=config["encoder_depth"],
                               encoder_num_heads=config["encoder_num_heads"],
                               encoder_global_attn_indexes=config["encoder_global_attn_indexes"])
        else:
            model = sam_model_registry[params["model"]](checkpoint=None)
        model.load_state_dict(torch.load(params["checkpoint"], map_location="cpu", weights_only=True))
        return SamPredictor(model.eval().to(device))

    def infer(predictor: Any, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        predictor.set_image(image)
        if not len(boxes):
            return np.zeros((0, *image.shape[:2]), dtype=bool)
        prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float, device=device),
                                                        image.shape[:2])
        masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=prompts,
                                              multimask_output=False)
        return masks[:, 0].cpu().numpy()

    return load, infer


# -- SAM 2 ------------------------------------------------------------------------------------------
def sam2(kit: Kit):
    """(load, infer(image, boxes)): sam2's `build_sam2` + `SAM2ImagePredictor`, `predict(box=...)` per box
    (the Grounded-SAM-2 demo passes all boxes to one `predict`; per box is what our parity tests compare)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from recognize_sam2.cards import config_name

    params = kit.sam2_params()
    config = params.get("config")
    device = kit.device

    def load() -> Any:
        if config is not None:
            from recognize_sam2.model import Sam2Config, build_sam2 as ours, load_checkpoint

            model = load_checkpoint(ours(config=Sam2Config(**config)), params["checkpoint"]).to(device)
        else:
            model = build_sam2(config_name(params["model"], "2.1"), params["checkpoint"], device=device)
        return SAM2ImagePredictor(model)

    def infer(predictor: Any, image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        predictor.set_image(image)
        return [predictor.predict(box=box, multimask_output=True)[0] for box in boxes]

    return load, infer


# -- OWLv2 ------------------------------------------------------------------------------------------
def owlv2(kit: Kit, threshold: float = 0.1):
    """(load, infer(image, tags)): transformers' documented OWLv2 use, model built and loaded per image."""
    from safetensors.torch import load_file
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor

    from recognize_owlv2.model import build_config
    from recognize_owlv2.queries import tokenize

    params = kit.owlv2_params()
    device = kit.device

    def load() -> Any:
        model = Owlv2ForObjectDetection(build_config(params["model"], params.get("config")))
        model.load_state_dict(load_file(params["checkpoint"]))
        size = model.config.vision_config.image_size
        return model.eval().to(device), Owlv2ImageProcessor(size={"height": size, "width": size})

    def infer(loaded: Any, image: np.ndarray, tags: list[str]) -> Any:
        model, processor = loaded
        ids, mask = tokenize(tags)
        pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), pixel_values=pixels)
        return processor.post_process_object_detection(out, threshold=threshold, target_sizes=[image.shape[:2]])

    return load, infer
