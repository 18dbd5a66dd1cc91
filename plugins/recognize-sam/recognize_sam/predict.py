"""From boxes to masks: one image embedding per image, then the boxes decoded a few at a time.

Why low-resolution logits until a mask is kept: `SamPredictor`'s batched call upsamples every
candidate mask (3 per box with multimask output) to 1024x1024 and then to the full image size; for
big photos that upsampling dominates. We pick the best candidate on the 256x256 logits by its
predicted IoU and upsample only that one, box by box (one full-size float32 mask alive at a time).

Why the decoder takes `boxes_per_call` boxes per call (8; until issue 11's third step it took one):
on CPU the decoder is a string of small ops on the 4,096 image tokens (its GEMMs are 4096 x 256 x
128), whose per-call cost (thread wake-up, dispatch) is paid once per call, not once per box; its
linears also run through oneDNN on AVX-512 CPUs (`recognize_sam.model.build_sam`). Measured with vit_h's decoder on
2 shared cores, 8 boxes: 1.99 -> 0.54 CPU s per thread (`benchmarks/bench_sam_stage.py`,
`benchmarks/README.md`). Deliberate difference from `SamPredictor.predict(box=...)`: a batched call
(and oneDNN's summation order) gives the logits in other last bits, so a mask can differ where a
logit is within ~1e-6 of the threshold 0 (`tests/test_predict.py` bounds it at 1e-5); SAM's own
`predict_torch` batches the same way. The last bits of a box's logits and predicted IoUs also
depend (within float32 rounding) on which boxes share its call: `max_regions`, the order of the
boxes or another box added to the image changes the chunks of 8. And where two candidates' predicted
IoUs are within that rounding of each other, the other candidate can be picked: then the whole mask
differs, not just pixels at the threshold. Memory: a few tens of MB of decoder activations per box in
a call.

Why the kept masks are upsampled box by box on the CPU but a call's boxes together on a GPU: on the
CPU one full-size float mask at a time bounds the memory (a 13.8 MP photo's is 55 MB) and costs no
time. On a GPU every mask and score is copied into a pinned host buffer as it is made, without
waiting (`recognize.device_copies`), so the loop over boxes never stops the GPU and the host waits at
the end of each image; there a call's masks are upsampled in one go (fewer, larger kernels) unless
their float32 size would pass `TOGETHER_BYTES` (a 50 MP photo's 8 masks: 1.6 GB). Both ways give the
same masks (`tests/test_predict.py` runs the GPU's way on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam as SamModel
from segment_anything.utils.transforms import ResizeLongestSide

from recognize.device_copies import HostBuffer, is_cuda, to_device
from recognize.feature_cache import content_key, feature_cache


@dataclass
class ImageEmbedding:
    """SAM's embedding of one image and the sizes needed to map masks back onto it."""

    features: torch.Tensor  # 1 x 256 x 64 x 64
    input_size: tuple[int, int]  # (h, w) after resizing the long side to 1024
    original_size: tuple[int, int]  # (h, w) of the image


@dataclass
class BoxMasks:
    """Masks (N x H x W, bool) for N boxes and SAM's predicted IoU of each kept mask."""

    masks: np.ndarray
    scores: np.ndarray


class BoxSegmenter:
    """Embeds images and decodes box prompts with a SAM model (same preprocessing as `SamPredictor`)."""

    #: boxes per mask-decoder call (see the module docstring); activations: a few tens of MB per box
    boxes_per_call: int = 8
    #: on a GPU, a call's kept masks are upsampled together while their float32 size stays under this
    TOGETHER_BYTES: int = 1 << 30

    def __init__(self, sam: SamModel, upsample_together: bool | None = None) -> None:
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        #: upsample a decoder call's kept masks together (None: on CUDA only; see the module doc)
        self.upsample_together = upsample_together

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def encoder_input(self) -> tuple[tuple[str, int], Callable[[np.ndarray], np.ndarray]]:
        """`(key, resize)`: the resize of an image to this encoder's input (`ResizeLongestSide`, as
        `SamPredictor.set_image`), and the key it is kept under on a frame (`Frame.prepare_ahead`)."""
        return ("sam_input", self.transform.target_length), self.transform.apply_image

    def embed(self, images: Sequence[np.ndarray],
              resized: Callable[[int], np.ndarray] | None = None) -> list[ImageEmbedding]:
        """Embed RGB uint8 HxWx3 images in one encoder batch; an image seen before (same pixels,
        same model) reuses its embedding when `recognize.feature_cache` is on. `resized(i)`: image
        `i` already resized to the encoder's input (`encoder_input`), asked only for images to embed."""
        keys = [content_key(image) for image in images] if feature_cache.enabled else [""] * len(images)
        resize = resized if resized is not None else (lambda i: self.transform.apply_image(images[i]))
        return feature_cache.compute_many(
            self.sam, keys, lambda todo: self._embed([images[i] for i in todo], [resize(i) for i in todo]))

    @torch.inference_mode()
    def _embed(self, images: Sequence[np.ndarray], resized_images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        if not images:
            return []
        batch, sizes = [], []
        for image, resized in zip(images, resized_images, strict=True):
            # uint8 up (pinned on CUDA); a resize made ahead is read-only: `to_device` copies it
            pixels = to_device(resized, self.device).permute(2, 0, 1).contiguous()[None]
            batch.append(self.sam.preprocess(pixels))
            sizes.append((tuple(resized.shape[:2]), tuple(image.shape[:2])))
        features = self.sam.image_encoder(torch.cat(batch))
        return [
            ImageEmbedding(features=features[i : i + 1], input_size=input_size, original_size=original_size)
            for i, (input_size, original_size) in enumerate(sizes)
        ]

    @torch.inference_mode()
    def segment(self, embedding: ImageEmbedding, boxes: np.ndarray, multimask: bool = True) -> BoxMasks:
        """One mask per xyxy pixel box; with `multimask`, the best of SAM's three candidates."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        height, width = embedding.original_size
        if not len(boxes):
            return BoxMasks(np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32))
        together = self.upsample_together
        if together is None:
            together = is_cuda(self.device) and self.boxes_per_call * height * width * 4 <= self.TOGETHER_BYTES
        masks = HostBuffer((len(boxes), height, width), torch.bool, self.device)
        scores = HostBuffer((len(boxes),), torch.float32, self.device)
        prompts = to_device(self.transform.apply_boxes(boxes, embedding.original_size).astype(np.float32), self.device)
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        for start in range(0, len(boxes), self.boxes_per_call):
            chunk = prompts[start : start + self.boxes_per_call]
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=chunk, masks=None)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            best = iou.argmax(dim=1)  # chosen on the device: no host sync
            rows = torch.arange(len(chunk), device=iou.device)
            kept_logits = low_res[rows, best][:, None]  # only the kept candidate is upsampled
            scores.put(slice(start, start + len(chunk)), iou[rows, best].float())
            parts = [slice(0, len(chunk))] if together else [slice(j, j + 1) for j in range(len(chunk))]
            for part in parts:
                kept = self.sam.postprocess_masks(kept_logits[part], embedding.input_size, embedding.original_size)
                masks.put(slice(start + part.start, start + part.stop), kept[:, 0] > self.sam.mask_threshold)
        return BoxMasks(masks.numpy(), scores.numpy())
