"""The baseline's Grounding DINO: the official model code (rf-groundingdino), the demo's way.

Runs inside the official environment (`official_env.py`), never in the benchmark process.

    python official_gdino_worker.py write SPEC.json   # seeded random official model -> its checkpoint file
    python official_gdino_worker.py serve SPEC.json   # build + load, print `ready <load s>`, then one job

`serve` is one demo run for one photo: it builds the model (`build_model(SLConfig)` for the
released swint_ogc config, or the tiny test sizes) and loads the checkpoint as the demo's
`load_model` does (`torch.load` + `load_state_dict(clean_state_dict(...), strict=False)`), says
it is ready, reads one JSON job on stdin (image .npy, tags, thresholds) and answers with one JSON
line: the demo's boxes (xyxy pixels, after NMS 0.5), their phrases and the inference seconds.
A spec's `device` (default `cpu`; `Kit.official_gdino_spec` names the kit's) is where `serve` computes: the
model goes there once loaded (as our side's baseline does), the pixels at inference, and the outputs come
back with `.cpu()` as in the demo's `get_grounding_output`. On a GPU it runs cuDNN without TF32, as both
sides of the stage table do (`bench_jobs.stage_pair` sets it in its own process, not in this one), and its
answer carries this process's peak GPU memory (`peak_device_mb`): the model lives here, not in the
benchmark's process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins" / "recognize-grounding-dino" / "tests"))  # gd_support


class _Patch:  # what gd_support.official_tiny_model needs of pytest's monkeypatch
    @staticmethod
    def setattr(target, name, value):
        setattr(target, name, value)


def build(spec: dict) -> torch.nn.Module:
    import groundingdino.models.GroundingDINO.groundingdino as official
    from recognize_grounding_dino.model import load_tokenizer
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer(spec["vocab"])
    if spec.get("config"):
        from gd_support import official_tiny_model

        return official_tiny_model(tokenizer, spec["config"], _Patch())
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    # the official code downloads bert-base-uncased here; offline, the same architecture from its config
    official.get_tokenlizer.get_tokenlizer = lambda _name: tokenizer
    official.get_tokenlizer.get_pretrained_language_model = lambda _name: BertModel(BertConfig())
    args = SLConfig.fromfile(str(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"))
    args.device = spec.get("device") or "cpu"  # the demo's `args.device = device`
    return build_model(args).eval()


#: std of the seeded noise put into the tensors the official initialisation leaves at zero
ZERO_INIT_NOISE = 0.02
#: scale of the decoder's last LayerNorm (official init: 1), which the text-box logits are read from
DECODER_NORM_SCALE = 0.125


def write(spec: dict) -> None:
    """The official model as its own code initialises it (seeded), plus seeded noise in every tensor that
    initialisation leaves at zero, saved in the official layout.

    Why not noise everywhere (as this benchmark once did): with every tensor ~N(0, 0.02²), LayerNorm
    scales included, activations shrink to their biases, every image position looks alike, and the
    two-stage query selection ranks the padding proposals (whose `inf` coordinates sigmoid to 1) on top:
    all 900 queries became one saturated box, so NMS left one box per photo and the chain's SAM decoded
    one mask instead of the cap. Kept from the official init (LayerNorm at 1, Xavier/trunc-normal
    weights) the features vary over the photo and the queries are real, varied proposals; the noise in
    the zero-initialised tensors (box heads' last layers, sampling offsets, biases) keeps every path
    computing (box regression included) in the same amount as real weights do. The decoder's final
    LayerNorm is scaled by `DECODER_NORM_SCALE`: at the init's scale the contrastive logits of two random
    256-d unit vectors reach +-16, most scores round to 1.0 in float32, and which boxes make the
    `max_boxes` cut among those ties is up to each implementation's sort; scaled, the scores spread over
    ~0.25-0.9 (as trained ones do) and both sides keep the same best boxes.
    """
    torch.manual_seed(0)
    model = build(spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():  # shared heads (bbox_embed) appear once per name: filled once
            if tensor.is_floating_point() and not tensor.any():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * ZERO_INIT_NOISE)
        model.transformer.decoder.norm.weight.mul_(DECODER_NORM_SCALE)
    torch.save({"model": model.state_dict()}, spec["checkpoint"])


def serve(spec: dict) -> None:
    import groundingdino.datasets.transforms as T
    import torchvision
    from groundingdino.util.utils import clean_state_dict, get_phrases_from_posmap
    from PIL import Image

    start = time.perf_counter()
    model = build(spec)
    checkpoint = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False)
    device = spec.get("device") or "cpu"
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.backends.cudnn.allow_tf32 = False
    model.eval().to(device)
    if on_gpu:
        torch.cuda.synchronize(device)  # the copies to the GPU are part of loading
    print(f"ready {time.perf_counter() - start:.6f}", flush=True)

    job = json.loads(sys.stdin.readline())
    start = time.perf_counter()
    image = np.load(job["image"])
    transform = T.Compose([T.RandomResize([job["size"]], max_size=job["max_size"]), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    pixels, _ = transform(Image.fromarray(image), None)
    caption = ", ".join(job["tags"]).lower().strip()
    caption = caption if caption.endswith(".") else caption + "."
    with torch.no_grad():
        outputs = model(pixels.to(device)[None], captions=[caption])
    logits = outputs["pred_logits"].cpu().sigmoid()[0]
    boxes = outputs["pred_boxes"].cpu()[0]
    keep = logits.max(dim=1)[0] > job["box_threshold"]
    logits, boxes = logits[keep], boxes[keep]
    tokenized = model.tokenizer(caption)
    phrases = [get_phrases_from_posmap(row > job["text_threshold"], tokenized, model.tokenizer) for row in logits]
    height, width = image.shape[:2]
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([width, height, width, height])
    kept = torchvision.ops.nms(xyxy, logits.max(dim=1)[0], 0.5).tolist()
    peak = {"peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20} if on_gpu else {}
    print(json.dumps({"boxes": xyxy[kept].tolist(), "phrases": [phrases[i] for i in kept],
                      "infer_s": time.perf_counter() - start, **peak}), flush=True)


def bench(spec: dict) -> None:
    """Model loaded once; then one JSON job per stdin line (a preprocessed pixel tensor .npy and a
    caption): the forward's seconds, and on request its per-part times and operator table.
    `bench_gdino_official.py` sends our side's very tensor and caption, job by job, interleaved."""
    from gdino_timing import op_table, part_times, timed
    from groundingdino.util.utils import clean_state_dict

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    model = build(spec)
    checkpoint = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False)
    model.eval()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pixels = torch.from_numpy(np.load(job["pixels"]))

        def forward(pixels=pixels, caption=job["caption"]):
            with torch.no_grad():
                return model(pixels, captions=[caption] * pixels.shape[0])

        if job.get("parts"):
            reply: dict = {"parts": part_times(model, forward)}
            reply["forward_s"] = reply["parts"]["total"]
        else:
            reply = {"forward_s": timed(forward)}
        if job.get("profile"):
            reply["ops"] = op_table(forward)
        if job.get("outputs"):
            out = forward()
            np.save(job["outputs"], np.concatenate([out["pred_logits"].numpy(), out["pred_boxes"].numpy()], -1))
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    {"write": write, "serve": serve, "bench": bench}[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
