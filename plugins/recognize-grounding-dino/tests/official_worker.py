"""Runs inside the oracle environment (see oracle_env.py): the official Grounding DINO code, one job.

Usage: python official_worker.py JOB.json. The job names a task and its inputs; the results go to
the job's `output` .npz file. Everything here imports the official code (rf-groundingdino) and
transformers 4.x; nothing here is imported by the test process.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def _patch_tokenizer(official, tokenizer, text_config):
    from transformers import BertConfig, BertModel

    official.get_tokenlizer.get_tokenlizer = lambda _name: tokenizer
    official.get_tokenlizer.get_pretrained_language_model = lambda _name: BertModel(BertConfig(**text_config))


def full_size_keys(job) -> dict[str, np.ndarray]:
    """Names and shapes of the state dict the official loader fills, for each shipped config."""
    import groundingdino
    import groundingdino.models.GroundingDINO.groundingdino as official
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from transformers.modeling_utils import no_init_weights

    from recognize_grounding_dino.model import load_tokenizer

    # bert-base-uncased is BertConfig's default; the official code would download it here
    _patch_tokenizer(official, load_tokenizer(job["vocab"]), {})
    out = {}
    for config_file in job["configs"]:
        args = SLConfig.fromfile(str(Path(groundingdino.__file__).parent / "config" / config_file))
        with no_init_weights():  # only the names and shapes matter
            state = build_model(args).state_dict()
        out[f"{config_file}:names"] = np.array(list(state))
        out[f"{config_file}:shapes"] = np.array(json.dumps([list(v.shape) for v in state.values()]))
    return out


def _official_tensor(image: np.ndarray, size: int, max_size: int) -> torch.Tensor:
    from PIL import Image

    import groundingdino.datasets.transforms as T

    transform = T.Compose([T.RandomResize([size], max_size=max_size), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return transform(Image.fromarray(image), None)[0]


def tiny_model(job) -> tuple[torch.nn.Module, object]:
    import groundingdino.models.GroundingDINO.groundingdino as official
    from gd_support import official_tiny_model, randomize_

    from recognize_grounding_dino.model import load_tokenizer

    class Patch:  # the subset of pytest's monkeypatch that official_tiny_model uses
        @staticmethod
        def setattr(target, name, value):
            setattr(target, name, value)

    tokenizer = load_tokenizer(job["vocab"])
    model = randomize_(official_tiny_model(tokenizer, job["config"], Patch()), seed=job["seed"])
    return model, official


def build_tiny(job) -> dict[str, np.ndarray]:
    """A tiny official model with seeded random weights, saved as released: {"model": ...} with DDP's prefix."""
    model, _ = tiny_model(job)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, job["checkpoint"])
    return {"parameters": np.array(sum(p.numel() for p in model.parameters()))}


@contextmanager
def _encoder_proposals(model):
    """Records what the two-stage query selection saw and chose: every encoder proposal's token
    logits (`enc_out_class_embed`'s output, before `topk`), the selected proposals' indices in query
    order (the official `torch.topk` over their max, recomputed from those logits) and their encoder
    boxes (`ref_enc`, the sigmoid of the gathered coordinates the decoder starts from)."""
    found: dict[str, np.ndarray] = {}
    transformer = model.transformer

    def on_class(_module, _inputs, output):
        found["proposal_logits"] = output.numpy()
        found["selected"] = torch.topk(output.max(-1)[0], transformer.num_queries, dim=1)[1].numpy()

    def on_transformer(_module, _inputs, output):
        found["selected_boxes"] = output[3][0].numpy()

    handles = [transformer.enc_out_class_embed.register_forward_hook(on_class),
               transformer.register_forward_hook(on_transformer)]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def run_tiny(job) -> dict[str, np.ndarray]:
    """The official model (loaded from the saved checkpoint) and `predict()` on each image and caption."""
    from groundingdino.util.inference import predict

    model, _ = tiny_model(job)
    state = torch.load(job["checkpoint"], map_location="cpu", weights_only=True)["model"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    out = {}
    for i, image_path in enumerate(job["images"]):
        image = np.load(image_path)
        tensor = _official_tensor(image, job["size"], job["max_size"])
        out[f"tensor_{i}"] = tensor.numpy()
        for j, caption in enumerate(job["captions"]):
            with torch.no_grad(), _encoder_proposals(model) as proposals:
                reference = model(tensor[None], captions=[caption])
            out[f"logits_{i}_{j}"] = reference["pred_logits"].numpy()
            out[f"boxes_{i}_{j}"] = reference["pred_boxes"].numpy()
            for name, value in proposals.items():
                out[f"{name}_{i}_{j}"] = value
            if "box_threshold" in job:
                boxes, scores, _phrases = predict(model, tensor, caption, box_threshold=job["box_threshold"],
                                                  text_threshold=job["text_threshold"], device="cpu")
                out[f"predict_boxes_{i}_{j}"] = boxes.numpy().reshape(-1, 4)
                out[f"predict_scores_{i}_{j}"] = scores.numpy().reshape(-1)
    return out


TASKS = {"full_size_keys": full_size_keys, "build_tiny": build_tiny, "run_tiny": run_tiny}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(0)
    results = TASKS[job["task"]](job)
    np.savez(job["output"], **results)


if __name__ == "__main__":
    main()
