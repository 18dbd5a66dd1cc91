"""The models the benchmarks run: official sizes with random weights, or tiny ones in `--quick` mode.

Compute does not depend on weight values, so random weights in each model's own checkpoint layout
stand in for the released files. They are written once to a cache folder (`$RECOGNIZE_BENCH_CACHE`,
else `~/.cache/recognize/benchmarks`), so load times include reading a real checkpoint file, as a
real run does. `--quick` uses the tiny parity fixtures of the taggers (`../shared/reference`, or
`$RECOGNIZE_REFERENCE`) and tiny Grounding DINO / SAM configurations.

Our stages and the baselines are built from the same files and the same model classes.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
IMAGES = sorted((REFERENCE / "data" / "images").rglob("*.jpg"))
TAG_DATA = REFERENCE / "data" / "ram" / "data"

#: The full run's defaults (`run.py` without `--images` / `--repeats`).
DEFAULT_IMAGES = 4
DEFAULT_REPEATS = 2
STAGES = ("ram", "ram_plus", "tag2text", "grounding_dino", "sam", "sam2", "owlv2", "tiled")
#: What a run measures unless `--stages` names others: the plugin distributions' second localizer,
#: second segmenter and tiling are measured on request (`--stages sam2,owlv2,tiled`).
DEFAULT_STAGES = ("ram", "ram_plus", "tag2text", "grounding_dino", "sam")
#: Stages that locate the fixed TAGS, and stages that segment fixed boxes.
LOCALIZERS = ("grounding_dino", "owlv2", "tiled")
SEGMENTERS = ("sam", "sam2")
#: SAM 2 is measured at the CPU recipe's size (hiera_large, the stage's default, costs several times more).
SAM2_MODEL = "hiera_tiny"
#: `tiled`: OWLv2 on 960 px slices with 20% overlap (its own input size), plus the whole image.
TILE, OVERLAP = 960, 192
#: The tags every image gets (they exist in all vocabularies, the tiny RAM++ fixture's 64 included), so
#: Grounding DINO reads the same caption in our stage and in the baseline whatever the random weights say.
TAGS = ("accessory", "airplane window", "airport", "alarm clock", "alley", "alpaca", "album cover", "actor")
#: Boxes per image given to SAM (and the cap on regions per image in the recipe benchmark); quick: 1.
BOXES = 8
QUICK_BOXES = 1

#: The official Grounding DINO checkpoint's recipe version, in its cache file names: a new version is
#: written once (v2: the official init plus noise in its zero tensors, so the queries are varied boxes;
#: v1, noise in every tensor, gave one saturated box per photo; see `official_gdino_worker.write`).
OFFICIAL_GDINO_VERSION = 2

#: Grounding DINO: BERT-base text encoder vocabulary size, and the ids it reads as delimiters.
BERT_VOCAB_SIZE = 30522
_FIXED_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}

TINY_GD = {
    "backbone_config": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
                        "window_size": 7, "image_size": 224, "out_features": ["stage2", "stage3", "stage4"]},
    "text_config": {"model_type": "bert", "vocab_size": BERT_VOCAB_SIZE, "hidden_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512},
    # 2 decoder layers: transformers 5 cannot tie the shared box head of a 1-layer decoder
    "d_model": 256, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4, "num_queries": 30,
}
TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1]}
TINY_SAM2 = {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]}
TINY_OWLV2 = {
    "projection_dim": 32,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                      "patch_size": 16, "image_size": 128},
}


def default_cache() -> Path:
    env = os.environ.get("RECOGNIZE_BENCH_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "recognize" / "benchmarks"


@dataclass(frozen=True)
class Kit:
    """Where the benchmark models come from: `quick` (tiny) or official sizes, and the cache folder."""

    quick: bool
    cache: Path
    #: the baseline's Grounding DINO: the official code (rf-groundingdino, own venv) or our model classes
    official_gdino: bool = True
    #: where both sides compute (`run.py --device`): `cpu`, or `cuda` for the GPU stage table
    device: str = "cpu"

    # -- sizes ---------------------------------------------------------------------------
    def describe(self, stage: str) -> str:
        if self.quick:
            return {"grounding_dino": "tiny", "sam": "tiny", "sam2": "tiny", "owlv2": "tiny",
                    "tiled": "tiny owlv2, 128 px tiles"}.get(stage, "tiny fixture")
        return {"ram": "Swin-L 384", "ram_plus": "Swin-L 384", "tag2text": "Swin-B 384",
                "grounding_dino": "swint_ogc 800", "sam": "vit_h", "sam2": SAM2_MODEL,
                "owlv2": "base_patch16_ensemble 960",
                "tiled": f"owlv2 base 960, tiles {TILE}/{OVERLAP} + whole"}[stage]

    @property
    def boxes(self) -> int:
        return QUICK_BOXES if self.quick else BOXES

    @property
    def gd_size(self) -> tuple[int, int]:
        """Grounding DINO short side / long-side cap (the reference 800/1333; smaller when quick)."""
        return (160, 256) if self.quick else (800, 1333)

    # -- files ---------------------------------------------------------------------------
    def _file(self, name: str, write) -> Path:
        path = self.cache / ("quick" if self.quick else "full") / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            write(tmp)
            tmp.replace(path)
        return path

    def vocab(self) -> Path:
        return self._file("vocab.txt", write_vocab)

    def tagger_params(self, stage: str) -> dict[str, Any]:
        """Our tagger stage's params (files) for `stage` in ram / ram_plus / tag2text."""
        if self.quick:
            folder = REFERENCE / "fixtures" / stage
            return {"config": str(folder / "config.json"), "checkpoint": str(folder / "checkpoint.pth")}
        checkpoint = self._file(f"{stage}_random.pth", lambda p: write_tagger_checkpoint(stage, p))
        if stage == "tag2text":
            return {"checkpoint": str(checkpoint), "tag_list": str(TAG_DATA / "tag2text_ori_tag_list.txt")}
        return {"checkpoint": str(checkpoint), "tag_list": str(TAG_DATA / "ram_tag_list.txt"),
                "tag_list_zh": str(TAG_DATA / "ram_tag_list_chinese.txt"),
                "threshold_file": str(TAG_DATA / "ram_tag_list_threshold.txt")}

    def gd_params(self) -> dict[str, Any]:
        config = TINY_GD if self.quick else None
        checkpoint = self._file("grounding_dino_random.pth", lambda p: write_gd_checkpoint(config, p))
        short, long = self.gd_size
        params: dict[str, Any] = {"model": "swint_ogc", "checkpoint": str(checkpoint), "vocab": str(self.vocab()),
                                  "image_size": short, "max_size": long}
        if config is not None:
            params["config"] = config
        return params

    def official_gdino_spec(self) -> Path:
        """The official worker's spec (sizes, vocab, checkpoint, and the kit's device where it is not the
        CPU), its seeded random checkpoint written by the official code itself (on the CPU), in the
        official layout, once."""
        import json

        from official_env import official_python

        python = official_python()
        spec = {"vocab": str(self.vocab()), "config": TINY_GD if self.quick else None}

        def write_checkpoint(path: Path) -> None:
            run_official_worker(python, "write", {**spec, "checkpoint": str(path)})

        checkpoint = self._file(f"grounding_dino_official_random_v{OFFICIAL_GDINO_VERSION}.pth", write_checkpoint)
        on = {} if self.device == "cpu" else {"device": self.device}
        suffix = "" if self.device == "cpu" else f"_{self.device}"
        return self._file(f"grounding_dino_official_spec_v{OFFICIAL_GDINO_VERSION}{suffix}.json",
                          lambda p: p.write_text(json.dumps({**spec, "checkpoint": str(checkpoint), **on})))

    def sam_params(self, model: str = "vit_h") -> dict[str, Any]:
        """SAM's stage parameters: vit_h (the benchmark's SAM), or a lighter variant (the chain's fast mode on
        CPUs where neither bf16 nor int8 pays off)."""
        config = TINY_SAM if self.quick else None
        name = "sam_random.pth" if model == "vit_h" else f"sam_{model}_random.pth"
        checkpoint = self._file(name, lambda p: write_sam_checkpoint(config, p, model))
        params: dict[str, Any] = {"model": model, "checkpoint": str(checkpoint)}
        if config is not None:
            params["config"] = config
        return params

    def sam2_params(self) -> dict[str, Any]:
        config = TINY_SAM2 if self.quick else None
        checkpoint = self._file(f"sam2_{SAM2_MODEL}_random.pt", lambda p: write_sam2_checkpoint(config, p))
        params: dict[str, Any] = {"model": SAM2_MODEL, "checkpoint": str(checkpoint)}
        if config is not None:
            params["config"] = config
        return params

    def owlv2_params(self) -> dict[str, Any]:
        config = TINY_OWLV2 if self.quick else None
        checkpoint = self._file("owlv2_random.safetensors", lambda p: write_owlv2_checkpoint(config, p))
        params: dict[str, Any] = {"model": "base_patch16_ensemble", "checkpoint": str(checkpoint)}
        if config is not None:
            params["config"] = config
        return params

    def tiled_params(self) -> dict[str, Any]:
        tile, overlap = (128, 32) if self.quick else (TILE, OVERLAP)
        return {"tile": tile, "overlap": overlap, "localizer": {"use": "owlv2", "with": self.owlv2_params()}}

    def stage_params(self, stage: str) -> dict[str, Any]:
        if stage == "grounding_dino":
            return self.gd_params()
        if stage == "sam":
            return self.sam_params()
        if stage == "sam2":
            return self.sam2_params()
        if stage == "owlv2":
            return self.owlv2_params()
        if stage == "tiled":
            return self.tiled_params()
        return self.tagger_params(stage)

    def prepare(self, stages: list[str]) -> None:
        """Write every missing random checkpoint now (outside any timing)."""
        for stage in stages:
            self.stage_params(stage)
            if stage == "grounding_dino" and self.official_gdino:
                self.official_gdino_spec()


# -- random checkpoints in each model's own layout --------------------------------------------------
def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def write_tagger_checkpoint(stage: str, path: Path) -> None:
    """A released-size RAM / RAM++ / Tag2Text model, random weights, in the official key layout."""
    if stage == "tag2text":
        from recognize.taggers.tag2text import Tag2Text, Tag2TextConfig

        model = _seeded(lambda: Tag2Text(Tag2TextConfig.released(384)))
    else:
        from recognize.taggers.ram import RamConfig, build_model

        model = _seeded(lambda: build_model(RamConfig.released(stage, 384)))
    key_map = model.key_spec().key_map
    state = {key_map[key]: tensor for key, tensor in model.state_dict().items()}
    torch.save({"model": state}, path)


def write_gd_checkpoint(config: dict[str, Any] | None, path: Path) -> None:
    from recognize_grounding_dino.model import build_config, build_model

    model = _seeded(lambda: build_model(build_config("swint_ogc", config)))
    torch.save(model.state_dict(), path)


def official_worker_env() -> dict[str, str]:
    """PYTHONPATH for the official worker: this checkout's packages first (the venv sees site-packages)."""
    repo = Path(__file__).resolve().parents[1]
    paths = [str(repo), str(repo / "plugins" / "recognize-grounding-dino"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run_official_worker(python: Path, command: str, spec: dict[str, Any]) -> None:
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(spec, file)
    worker = Path(__file__).resolve().parent / "official_gdino_worker.py"
    result = subprocess.run([str(python), str(worker), command, file.name], capture_output=True, text=True,
                            env=official_worker_env())
    Path(file.name).unlink()
    if result.returncode != 0:
        raise RuntimeError(f"official Grounding DINO worker ({command}) failed: {result.stderr.strip()[-3000:]}")


def write_sam_checkpoint(config: dict[str, Any] | None, path: Path, model: str = "vit_h") -> None:
    from recognize_sam.model import SamConfig, build_sam

    sam = build_sam(model, SamConfig(**config) if config else None, seed=0)
    torch.save(sam.state_dict(), path)


def write_sam2_checkpoint(config: dict[str, Any] | None, path: Path) -> None:
    """Random SAM 2 weights in Meta's layout ({"model": state_dict})."""
    from recognize_sam2.model import Sam2Config, build_sam2

    sam = build_sam2(SAM2_MODEL, "2.1", Sam2Config(**config) if config else None, seed=0)
    torch.save({"model": sam.state_dict()}, path)


def write_owlv2_checkpoint(config: dict[str, Any] | None, path: Path) -> None:
    """Random OWLv2 weights as the hub's model.safetensors holds them."""
    from safetensors.torch import save_file

    from recognize_owlv2.model import build_owlv2

    model = build_owlv2("base_patch16_ensemble", config, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_vocab(path: Path) -> None:
    """A bert-base-uncased-shaped vocab.txt (30522 tokens, delimiters at their real ids).

    No real vocab file exists offline; the text encoder's cost depends on the token count, which
    single letters plus `##` letter pieces keep realistic (a bit above WordPiece's for rare words).
    """
    pieces = list(string.ascii_lowercase + string.digits) + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    pieces += [w for tag in TAGS for w in tag.split()] + list(",;:-'")
    pieces = list(dict.fromkeys(pieces))
    filler = iter(pieces)
    tokens = [_FIXED_IDS.get(i) or next(filler, None) or f"[unused{i}]" for i in range(BERT_VOCAB_SIZE)]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")


# -- inputs ---------------------------------------------------------------------------------------
def image_paths(count: int) -> list[Path]:
    """`count` reference images, cycling through the ones there are."""
    if not IMAGES:
        raise SystemExit(f"no reference images under {REFERENCE / 'data' / 'images'} (set RECOGNIZE_REFERENCE)")
    return [IMAGES[i % len(IMAGES)] for i in range(count)]


def boxes_for(height: int, width: int, count: int = BOXES, seed: int = 0) -> np.ndarray:
    """`count` seeded xyxy boxes inside a `width` x `height` image (what SAM gets to segment)."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, width * 0.6, count), rng.uniform(0, height * 0.6, count)
    x1 = np.minimum(x0 + rng.uniform(16, width * 0.4, count), width - 1)
    y1 = np.minimum(y0 + rng.uniform(16, height * 0.4, count), height - 1)
    return np.stack([x0, y0, x1, y1], axis=1)
