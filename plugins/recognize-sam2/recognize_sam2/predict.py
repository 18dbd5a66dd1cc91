"""From boxes to masks with SAM 2: one image embedding per image, then each box decoded on its own.

This is `SAM2ImagePredictor.set_image` + `predict(box=...)` restructured for a pipeline:
- images are embedded in batches (`set_image` embeds one at a time), each image once for all
  of its boxes;
- each box is decoded with its own decoder call, as `predict(box=...)` does, so masks and scores
  are exactly the predictor's (the parity tests check this bit for bit);
- with multimask output the best candidate is chosen on the 256x256 logits and only that one is
  upsampled to the image size (the predictor upsamples all three; upsampling is per channel, so
  the kept mask is the same).
- the kept candidate is chosen on the device and each box's mask and score go into pinned host
  buffers without waiting (`recognize.device_copies`): on a GPU the loop over boxes never stops
  to read a result (the predictor reads each box's masks with `.cpu()`); the host waits at the end of
  each image.
Hole and sprinkle filling (the predictor's `max_hole_area`/`max_sprinkle_area`, off by default)
need sam2's optional CUDA op and are not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recognize.device_copies import HostBuffer, to_device


@dataclass
class ImageEmbedding:
    """SAM 2's features of one image (the predictor's `_features`) and the image's size."""

    image_embed: torch.Tensor  # 1 x 256 x 64 x 64
    high_res_feats: list[torch.Tensor]  # [1 x 32 x 256 x 256, 1 x 64 x 128 x 128]
    original_size: tuple[int, int]  # (h, w) of the image


@dataclass
class BoxMasks:
    """Masks (N x H x W, bool) for N boxes and SAM 2's predicted IoU of each kept mask."""

    masks: np.ndarray
    scores: np.ndarray


class BoxSegmenter:
    """Embeds images and decodes box prompts with a SAM 2 model (same preprocessing as `SAM2ImagePredictor`)."""

    def __init__(self, sam: torch.nn.Module, mask_threshold: float = 0.0) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.sam = sam
        self.mask_threshold = mask_threshold
        self.transforms = SAM2Transforms(resolution=sam.image_size, mask_threshold=mask_threshold)
        # feature-map sizes of the three levels the decoder uses: stride 4, 8 and 16 of the input
        self.feature_sizes = [(sam.image_size // s, sam.image_size // s) for s in (4, 8, 16)]

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Embed RGB uint8 HxWx3 images in one encoder batch."""
        if not images:
            return []
        batch = to_device(self.transforms.forward_batch(list(images)), self.device)
        backbone = self.sam.forward_image(batch)
        _, vision_feats, _, _ = self.sam._prepare_backbone_features(backbone)
        if self.sam.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.sam.no_mem_embed
        # (HW) x B x C -> B x C x H x W, finest level first
        feats = [
            feat.permute(1, 2, 0).reshape(len(images), -1, *size)
            for feat, size in zip(vision_feats, self.feature_sizes)
        ]
        return [
            ImageEmbedding(
                image_embed=feats[-1][i : i + 1],
                high_res_feats=[level[i : i + 1] for level in feats[:-1]],
                original_size=tuple(image.shape[:2]),
            )
            for i, image in enumerate(images)
        ]

    @torch.inference_mode()
    def segment(self, embedding: ImageEmbedding, boxes: np.ndarray, multimask: bool = True) -> BoxMasks:
        """One mask per xyxy pixel box; with `multimask`, the best of SAM 2's three candidates."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        height, width = embedding.original_size
        if not len(boxes):
            return BoxMasks(np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32))
        masks = HostBuffer((len(boxes), height, width), torch.bool, self.device)
        scores = HostBuffer((len(boxes),), torch.float32, self.device)
        corners = self.transforms.transform_boxes(
            torch.as_tensor(boxes, dtype=torch.float, device=self.device), normalize=True, orig_hw=(height, width)
        )  # N x 2 x 2, in the 1024 x 1024 input frame
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device)  # SAM 2's box-corner labels
        dense_pe = self.sam.sam_prompt_encoder.get_dense_pe()
        for i in range(len(boxes)):
            sparse, dense = self.sam.sam_prompt_encoder(points=(corners[i : i + 1], labels), boxes=None, masks=None)
            low_res, iou, _, _ = self.sam.sam_mask_decoder(
                image_embeddings=embedding.image_embed,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=False,
                high_res_features=embedding.high_res_feats,
            )
            best = iou[0].argmax(dim=0, keepdim=True)  # chosen on the device: no host sync
            kept = self.transforms.postprocess_masks(low_res[0, best][:, None], (height, width))
            masks.put(slice(i, i + 1), kept[:, 0] > self.mask_threshold)
            scores.put(slice(i, i + 1), iou[0, best].float())
        return BoxMasks(masks.numpy(), scores.numpy())
