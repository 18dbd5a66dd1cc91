"""The Grounding DINO network: built offline from a config, loaded strictly, text encodings cached.

Backend: transformers' `GroundingDinoForObjectDetection` (see the README for why). The model is
built from a config (no download: the BERT text encoder is built from `text_config`, its
weights come from the Grounding DINO checkpoint) and the tokenizer from a local BERT
`vocab.txt`. Official checkpoints are renamed by `recognize_grounding_dino.convert`.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from recognize.device_copies import to_device
from recognize.errors import ModelFileError, RecognizeError
from recognize.feature_cache import content_key, feature_cache
from recognize.onednn_linear import use_onednn_linears
from recognize_grounding_dino.convert import align_backbone_layout, is_official, official_to_transformers, strip_prefix
from recognize_grounding_dino.prompts import Packing, Prompt, pack_prompts
from recognize_grounding_dino.versions import check_transformers

_SWIN_OUT = ["stage2", "stage3", "stage4"]

#: The two released models; everything else is transformers' GroundingDinoConfig default, which
#: matches the official configs (256-d, 900 queries, 6+6 layers, 4 levels, BERT-base text encoder).
PRESETS: dict[str, dict[str, Any]] = {
    "swint_ogc": {
        "backbone_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2],
                            "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 224,
                            "out_features": _SWIN_OUT},
    },
    "swinb": {
        "backbone_config": {"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2],
                            "num_heads": [4, 8, 16, 32], "window_size": 12, "image_size": 384,
                            "out_features": _SWIN_OUT},
    },
}

#: Token ids transformers' Grounding DINO hard-codes as phrase delimiters (bert-base-uncased ids).
DELIMITER_IDS = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}


def config_values(model: str, config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset's config values with `config` (a JSON file or a dict) laid over them."""
    values = copy.deepcopy(PRESETS[model])
    if config is None:
        return values
    if isinstance(config, Mapping):
        overrides = copy.deepcopy(dict(config))
    else:
        path = Path(config).expanduser()
        try:
            overrides = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RecognizeError(f"grounding_dino config {path}: {error}") from None
    for key, value in overrides.items():
        if key in ("backbone_config", "text_config") and isinstance(value, Mapping):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return values


def build_config(model: str, config: str | Path | Mapping[str, Any] | None = None) -> Any:
    from transformers import GroundingDinoConfig

    values = config_values(model, config)
    try:
        return GroundingDinoConfig(**values)
    except (TypeError, ValueError, KeyError) as error:
        raise RecognizeError(f"grounding_dino config: {error}") from None


def build_model(config: Any, init_weights: bool = True, on_meta: bool = False) -> torch.nn.Module:
    """An eval-mode `GroundingDinoForObjectDetection` with the leaner forwards of `lean_layers` (same
    weights, same results, fewer copies); `init_weights=False` skips the random init (the weights
    are about to be loaded anyway: the parameters hold uninitialised memory); `on_meta` puts the
    parameters on the meta device instead (no memory at all until `load_weights` assigns the
    checkpoint's tensors; `recognize.meta_init`).

    Why not transformers' `no_init_weights`: it swaps `torch.nn.init`'s functions and
    `PreTrainedModel.init_weights` for no-ops process-wide, and this runs on the background loading
    thread, so a module another thread built meanwhile would get `torch.empty` garbage (and two
    overlapping builds restore the swaps in the wrong order, leaving torch's init off for good).
    `parameters_on_meta` is thread-local and makes the init of its meta parameters free; skipping
    init without meta builds on meta too and then allocates the parameters (`allocate_parameters`)."""
    check_transformers()
    from transformers import GroundingDinoForObjectDetection

    from recognize.meta_init import allocate_parameters, parameters_on_meta
    from recognize_grounding_dino.lean_layers import lean

    try:
        if on_meta or not init_weights:
            with parameters_on_meta():
                model = GroundingDinoForObjectDetection(config)
        else:
            model = GroundingDinoForObjectDetection(config)
    except (ValueError, RuntimeError) as error:  # e.g. sizes transformers cannot wire together
        raise RecognizeError(f"grounding_dino config: cannot build the model ({error})") from None
    if not on_meta and not init_weights:
        allocate_parameters(model)
    _tie_box_heads(model)
    return lean(model).eval()


def _tie_box_heads(model: torch.nn.Module) -> None:
    """Every decoder layer's box head is one shared module (`post_init` ties them; tied again
    explicitly, as `load_weights`'s `_fill_tied` relies on the sharing).

    Its own error line: the config built a model, but one whose tied names do not resolve (a
    config the installed transformers wires differently), not a size transformers refused."""
    try:
        model.tie_weights()
    except (ValueError, RuntimeError, AttributeError) as error:
        raise RecognizeError(f"grounding_dino config: the built model's shared box heads cannot be tied "
                             f"({type(error).__name__}: {error})") from None


def load_tokenizer(vocab: str | Path) -> Any:
    """A lowercasing BERT WordPiece tokenizer from a local `vocab.txt` (never the network)."""
    import transformers
    from transformers import BertTokenizerFast

    path = Path(vocab)
    # transformers 5 takes the file as `vocab` and silently ignores the 4.x keyword `vocab_file`
    keyword = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    try:
        tokenizer = BertTokenizerFast(**{keyword: str(path)}, do_lower_case=True)
    except Exception as error:  # tokenizers raises its own exception types
        raise ModelFileError(f"{path}: not a BERT vocab.txt ({error})") from None
    for token, expected in DELIMITER_IDS.items():
        if tokenizer.convert_tokens_to_ids(token) != expected:
            raise ModelFileError(
                f"{path}: {token!r} must have id {expected} as in bert-base-uncased's vocab.txt "
                "(Grounding DINO reads phrase delimiters by id)"
            )
    return tokenizer


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.pth`/`.pt` (weights only) or `.safetensors` checkpoint; `{'model': ...}` unwrapped."""
    from recognize.weights_file import read_weights

    path = Path(path)
    data: Any = read_weights(path, "Grounding DINO checkpoint")  # memory-mapped where the file allows
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return dict(data)


def _fill_tied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Tensors the model shares under several names (the box head of every decoder layer) may be
    stored once (transformers' save_pretrained does that): fill the other names from it."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        # meta tensors have no data: a shared one is the same Parameter object under several names
        identity = id(tensor) if tensor.is_meta else tensor.data_ptr()
        groups.setdefault((identity, tuple(tensor.shape)), []).append(key)
    for names in groups.values():
        present = [n for n in names if n in state]
        if present and len(present) < len(names):
            for name in names:
                state.setdefault(name, state[present[0]])


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load an official or transformers-layout state dict; anything missing, unknown or of the
    wrong shape is an error (no silent partial load). Into a model built `on_meta` the tensors are
    assigned, not copied (the official layout's fused q/k/v tensors split into views, no copy)."""
    state = strip_prefix(state_dict)
    unknown: list[str] = []
    if is_official(state):
        state, unknown = official_to_transformers(state)
    expected = model.state_dict()
    state = align_backbone_layout(state, expected)
    _fill_tied(model, state)
    missing = [k for k in expected if k not in state]
    unexpected = unknown + [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
             for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(items)} {what} (first: {items[0]})" for what, items in
                 (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if items]
        raise ModelFileError(f"{source}: does not fit this Grounding DINO model: {'; '.join(parts)}")
    from recognize.meta_init import assign_state

    for key, tensor in state.items():
        if tensor.is_meta:  # taken from the model by `align_backbone_layout`: a parameter no forward reads
            state[key] = torch.zeros(tensor.shape, dtype=tensor.dtype)
    assign_state(model, state)


class _TextEncodingCache:
    """Mixin put on the text encoder instance: each distinct caption is encoded once.

    Grounding DINO re-runs BERT for every image; with a fixed class list (or many images with
    the same tags) that is the same caption again and again. Rows are keyed by their exact
    inputs, so a hit returns exactly what the encoder would compute.
    """

    cache_size = 256

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                *args: Any, **kwargs: Any):
        parent = super()
        if input_ids is None or args or torch.is_grad_enabled() or self.training:
            return parent.forward(input_ids, attention_mask, token_type_ids, position_ids, *args, **kwargs)
        from transformers.modeling_outputs import BaseModelOutput

        cache: OrderedDict = self.__dict__.setdefault("_encodings", OrderedDict())
        rows = [self._row_key(i, input_ids, attention_mask, token_type_ids, position_ids)
                for i in range(input_ids.shape[0])]
        first_row: dict[tuple, int] = {}
        for i, key in enumerate(rows):
            if key not in cache:
                first_row.setdefault(key, i)
        todo = list(first_row.values())  # one encoder row per distinct, not yet cached caption
        if todo:
            pick = torch.tensor(todo, device=input_ids.device)

            def take(t):
                return None if t is None else t.index_select(0, pick)

            out = parent.forward(input_ids=take(input_ids), attention_mask=take(attention_mask),
                                 token_type_ids=take(token_type_ids), position_ids=take(position_ids),
                                 return_dict=True)
            for j, i in enumerate(todo):
                cache[rows[i]] = out.last_hidden_state[j]
        hidden = torch.stack([cache[key] for key in rows])
        for key in rows:
            cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        if kwargs.get("return_dict") is False:
            return (hidden,)
        return BaseModelOutput(last_hidden_state=hidden)

    @staticmethod
    def _row_key(i: int, *tensors: torch.Tensor | None) -> tuple:
        return tuple(None if t is None else (tuple(t.shape[1:]), t[i].cpu().numpy().tobytes()) for t in tensors)


def enable_text_cache(model: torch.nn.Module) -> None:
    """Give the model's text encoder the caption cache (its weights and state dict are unchanged)."""
    text = model.model.text_backbone
    if not isinstance(text, _TextEncodingCache):
        text.__class__ = type(f"Cached{type(text).__name__}", (_TextEncodingCache, type(text)), {})


@contextlib.contextmanager
def reuse_image_features(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, the image backbone runs once per pixel tensor, not once per caption.

    Swin's features do not depend on the caption, but transformers' forward has no argument to
    pass them in; so the backbone's forward is wrapped for the block. The cached result is only
    returned for the very tensor it was computed from; anything else is computed afresh.
    """
    backbone = model.model.backbone
    computed: list[tuple[torch.Tensor, Any, Any]] = []

    def compute(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[list, list]:
        return type(backbone).forward(backbone, pixel_values, pixel_mask)

    def forward(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[list, list]:
        if not computed or computed[0][0] is not pixel_values:
            computed[:] = [(pixel_values, *_cached_backbone(backbone, compute, pixel_values, pixel_mask))]
        _, features, positions = computed[0]
        return list(features), list(positions)  # fresh lists: the model appends its extra levels to them

    backbone.forward = forward
    try:
        yield
    finally:
        backbone.__dict__.pop("forward", None)


def _cached_backbone(backbone: torch.nn.Module, compute: Any, pixel_values: torch.Tensor,
                     pixel_mask: torch.Tensor) -> tuple[list, list]:
    """The backbone's (features, positions), row by row from `recognize.feature_cache` when it is on:
    a photo asked about again with other tags or thresholds does not re-run Swin."""
    if not feature_cache.enabled:
        return compute(pixel_values, pixel_mask)
    keys = [content_key(pixel_values[i], pixel_mask[i]) for i in range(pixel_values.shape[0])]

    def rows(todo: list[int]) -> list[tuple[list, list]]:
        pick = torch.tensor(todo, device=pixel_values.device)
        features, positions = compute(pixel_values.index_select(0, pick), pixel_mask.index_select(0, pick))
        return [([(f[j : j + 1].clone(), m[j : j + 1].clone()) for f, m in features],
                 [p[j : j + 1].clone() for p in positions]) for j in range(len(todo))]

    found = feature_cache.compute_many(backbone, keys, rows)
    levels = len(found[0][0])
    features = [(torch.cat([row[0][k][0] for row in found]), torch.cat([row[0][k][1] for row in found]))
                for k in range(levels)]
    positions = [torch.cat([row[1][k] for row in found]) for k in range(levels)]
    return features, positions


class Detector:
    """A loaded Grounding DINO with its tokenizer: captions in, token scores and boxes out."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_text_len = int(model.config.max_text_len)
        enable_text_cache(self.model)
        # CPU fp32 Linears through oneDNN on AVX-512 CPUs (~2x MKL's GEMM on AMD; `onednn_linear.ONEDNN`;
        # the per-proposal official comparison runs this path); off CPU, under autocast or with int8
        # (torchao) weights they are torch's own
        use_onednn_linears(self.model)
        vocab_rows = model.config.text_config.vocab_size
        if len(tokenizer) > vocab_rows:
            raise ModelFileError(f"the vocab has {len(tokenizer)} tokens but the text encoder only {vocab_rows}")

    @classmethod
    def load(cls, model: str, checkpoint: str | Path, vocab: str | Path,
             config: str | Path | Mapping[str, Any] | None = None, device: str = "cpu") -> Detector:
        """Build from the config, then load `checkpoint` strictly (official or transformers keys)."""
        tokenizer = load_tokenizer(vocab)
        network = build_model(build_config(model, config), on_meta=True)
        load_weights(network, read_state_dict(checkpoint), str(checkpoint))
        return cls(network, tokenizer, device)

    def pack(self, tags: list[str]) -> Packing:
        return pack_prompts(tags, self.tokenizer, self.max_text_len)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `[B, 3, H, W]` (normalised, same size) and one caption ->
        per-query token probabilities `[B, Q, len(prompt)]` and boxes `[B, Q, 4]` (cx, cy, w, h in 0..1)."""
        batch = pixel_values.shape[0]
        ids = torch.tensor(prompt.input_ids, device=self.device).unsqueeze(0).expand(batch, -1)
        out = self.model(pixel_values=to_device(pixel_values, self.device), input_ids=ids,
                         attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
        probs = out.logits[..., : len(prompt)].sigmoid()
        return probs.float().cpu(), out.pred_boxes.float().cpu()

    @torch.inference_mode()
    def detect(self, pixel_values: torch.Tensor, prompts: Sequence[Prompt]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`__call__` for each caption on the same images; the image backbone runs once for all."""
        pixel_values = to_device(pixel_values, self.device)  # pinned and not waited for on CUDA
        with reuse_image_features(self.model):
            return [self(pixel_values, prompt) for prompt in prompts]
