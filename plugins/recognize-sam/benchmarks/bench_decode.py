"""How to decode N boxes on one image embedding: four ways, timed side by side in one process.

    python plugins/recognize-sam/benchmarks/bench_decode.py --boxes 20 --repeats 3
    python plugins/recognize-sam/benchmarks/bench_decode.py --image photo.jpg --model vit_b

1. `demo`: `SamPredictor.predict_torch` with all boxes in one call (the official demos' way);
   every candidate mask (3 per box) is upsampled to the full image, then the best is picked.
2. `per_box`: `SamPredictor.predict(box=...)` once per box; still upsamples all 3 candidates.
3. `batched_lowres`: one decoder call for all boxes, best candidate picked on the 256x256
   logits, only that one upsampled.
4. `stage`: what the `sam` stage does (`BoxSegmenter.segment`): `boxes_per_call` (8) boxes per
   decoder call with oneDNN linears, best candidate picked on the logits, only that one upsampled.

The mask decoder is the same in every SAM variant, so decoding costs the same whatever the
encoder; the weights are random (timing does not depend on their values). The image embedding
is computed once, outside the timings. Each repeat runs the methods in a rotated order so a
noisy, shared machine does not favour one of them. Also prints how many pixels each method's
masks differ from `per_box` (the stage's only where a logit is within ~1e-6 of 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor

from recognize.images import load_image
from recognize_sam.model import SamConfig, build_sam
from recognize_sam.predict import BoxSegmenter

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
TINY = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,))


def random_boxes(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, width * 0.7, count), rng.uniform(0, height * 0.7, count)
    x1 = np.minimum(x0 + rng.uniform(16, width * 0.4, count), width - 1)
    y1 = np.minimum(y0 + rng.uniform(16, height * 0.4, count), height - 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def demo(predictor: SamPredictor, boxes: np.ndarray, multimask: bool) -> np.ndarray:
    prompts = torch.as_tensor(predictor.transform.apply_boxes(boxes, predictor.original_size), dtype=torch.float)
    masks, scores, _ = predictor.predict_torch(None, None, boxes=prompts, multimask_output=multimask)
    best = scores.argmax(dim=1)
    return masks[torch.arange(len(boxes)), best].cpu().numpy()


def per_box(predictor: SamPredictor, boxes: np.ndarray, multimask: bool) -> np.ndarray:
    out = []
    for box in boxes:
        masks, scores, _ = predictor.predict(box=box, multimask_output=multimask)
        out.append(masks[int(np.argmax(scores))])
    return np.stack(out)


@torch.inference_mode()
def batched_lowres(predictor: SamPredictor, boxes: np.ndarray, multimask: bool) -> np.ndarray:
    sam = predictor.model
    prompts = torch.as_tensor(predictor.transform.apply_boxes(boxes, predictor.original_size), dtype=torch.float)
    sparse, dense = sam.prompt_encoder(points=None, boxes=prompts, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=predictor.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    kept = low_res[torch.arange(len(boxes)), iou.argmax(dim=1)][:, None]
    out = np.zeros((len(boxes), *predictor.original_size), dtype=bool)
    for i in range(len(boxes)):
        mask = sam.postprocess_masks(kept[i : i + 1], predictor.input_size, predictor.original_size)
        out[i] = (mask[0, 0] > sam.mask_threshold).cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=REFERENCE / "data" / "images" / "demo" / "demo2.jpg")
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=["tiny", "vit_b", "vit_l", "vit_h"], default="tiny",
                        help="encoder size (the decoder, which is what is timed, is the same in all)")
    parser.add_argument("--single-mask", action="store_true", help="decode one mask per box instead of three")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sam = build_sam(args.model if args.model != "tiny" else "vit_h", TINY if args.model == "tiny" else None, seed=0)
    image = load_image(args.image)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    segmenter = BoxSegmenter(sam)
    (embedding,) = segmenter.embed([image])
    assert torch.equal(embedding.features, predictor.features)
    boxes = random_boxes(*image.shape[:2], args.boxes)
    multimask = not args.single_mask

    methods = {
        "demo": lambda: demo(predictor, boxes, multimask),
        "per_box": lambda: per_box(predictor, boxes, multimask),
        "batched_lowres": lambda: batched_lowres(predictor, boxes, multimask),
        "stage": lambda: segmenter.segment(embedding, boxes, multimask).masks,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, np.ndarray] = {}
    names = list(methods)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - start)

    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, {args.boxes} boxes, "
          f"multimask={multimask}, encoder={args.model}, threads={torch.get_num_threads()}, repeats={args.repeats}")
    base = statistics.median(times["demo"])
    print(f"{'method':<16}{'median s':>10}{'per box ms':>12}{'vs demo':>9}{'pixels != per_box':>19}")
    for name in names:
        median = statistics.median(times[name])
        diff = int((results[name] != results["per_box"]).sum())
        print(f"{name:<16}{median:>10.3f}{1000 * median / args.boxes:>12.1f}{median / base:>9.2f}{diff:>19}")


if __name__ == "__main__":
    main()
