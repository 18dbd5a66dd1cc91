"""OWLv2's input pixels as `Owlv2ImageProcessor` makes them, without its full-resolution passes.

The processor rescales the whole photo to float, pads it with zeros to a square, blurs that square
with a 2-D Gaussian (anti-aliasing: sigma (side / size - 1) / 2, kernel 2 * ceil(3 sigma) + 1,
reflected at the edges), samples it bilinearly at size x size and normalises. On a 13.8 MP photo
that is a 13 x 13 convolution over the 18 Mpx of a 4288 px square, 2-3 s on this 2-core CPU: the
same work on both sides of the benchmark, but a tenth of the model's call here and, on a GPU, where
the model takes tens of milliseconds, most of the stage's time.

Blur and bilinear sampling are both linear and act on rows and columns apart, so per channel the
result is `Ay @ X @ Ax.T`, with `A` (size x length) the bilinear taps times the blur, the reflection
and the zero padding folded in: about 2 + kernel nonzeros per row. Two sparse products read each
pixel once and never build the padded square (0.1-0.2 s for 13.8 MP here, in float64). The bilinear
taps are torch's own (the identity interpolated, not a re-derived formula: torch computes the source
positions in float32, which a float64 formula misses by an ulp for some sizes), so the sampling
positions are exactly the processor's. A photo no larger than the model's input is not blurred: it
takes the processor's own pad and resize (cheap at that size), so its values are the processor's.

Why float64 for the sums: the processor's float32 convolution has its own rounding (~2e-6 after
normalising), and the tiny random model of the parity test passes such differences on to its boxes
almost undamped: float32 sums in another order moved one box corner by 1.2e-3 px, past the test's
1e-3 tolerance. Summing exactly leaves the processor's own rounding as the only difference.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: rows of the identity interpolated at once when finding the bilinear taps (bounded memory for a huge photo)
_CHUNK = 1024


def _gaussian(side: int, size: int) -> torch.Tensor:
    """The processor's 1-D anti-aliasing kernel for a `side` -> `size` resize (float32 math, as it does)."""
    sigma32 = (torch.tensor(side) / torch.tensor(size)).sub(1).div(2).clamp(min=0)
    sigma = float(sigma32)
    if sigma == 0:
        return torch.ones(1, dtype=torch.float64)
    # the width from float32's 3 sigma, as the processor rounds it: in float64, 3 sigma can land just above a
    # whole number where float32's is that number (side 4160 to 960: 13 taps against the processor's 11)
    taps = 2 * int(torch.ceil(3 * sigma32)) + 1
    half = (taps - 1) * 0.5
    x = torch.linspace(-half, half, taps)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).double()


def _bilinear(side: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output index, input index, weight) of torch's bilinear resize `side` -> `size` (align_corners False)."""
    outs, ins, weights = [], [], []
    for start in range(0, side, _CHUNK):
        count = min(_CHUNK, side - start)
        rows = torch.zeros(count, side)
        rows[torch.arange(count), torch.arange(start, start + count)] = 1
        taps = F.interpolate(rows[None], size=size, mode="linear", align_corners=False)[0]  # input x output
        source, target = taps.nonzero(as_tuple=True)
        outs.append(target)
        ins.append(source + start)
        weights.append(taps[source, target].double())
    return torch.cat(outs), torch.cat(ins), torch.cat(weights)


@lru_cache(maxsize=16)
def axis_weights(length: int, side: int, size: int) -> torch.Tensor:
    """Sparse (size x length) float64: one axis of `length` pixels, zero-padded to `side`, blurred and
    sampled at `size` points as the processor does."""
    kernel = _gaussian(side, size)
    out, src, weight = _bilinear(side, size)
    offsets = torch.arange(len(kernel)) - len(kernel) // 2
    index = src[:, None] + offsets
    index = torch.where(index < 0, -index, index)  # "reflect" padding (the edge pixel is not repeated)
    index = torch.where(index > side - 1, 2 * (side - 1) - index, index)
    dense = torch.zeros(size, side, dtype=torch.float64)
    dense.index_put_((out[:, None].expand_as(index), index), weight[:, None] * kernel, accumulate=True)
    return dense[:, :length].to_sparse().coalesce()  # columns past `length` read the zero padding


def owlv2_pixels(images: list[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) float32 model input of RGB uint8 HxWx3 images, as
    `Owlv2ImageProcessor(size={"height": size, "width": size})(images=images)["pixel_values"]`.

    The resampling sums uint8 values in float64 and divides by 255 after it (the processor divides first,
    in float32: a rounding of ~3e-8, far below its convolution's); normalised in float32 as it does."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        height, width = image.shape[:2]
        side = max(height, width)
        if side <= size:  # no blur when upsampling: the processor's own pad and resize, which are cheap here
            x = torch.from_numpy(np.array(image, dtype=np.float32)).mul_(1 / 255).permute(2, 0, 1)
            padded = F.pad(x, (0, side - width, 0, side - height))[None]
            resized = F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False)[0]
        else:
            x = torch.from_numpy(np.array(image, dtype=np.float64)).view(height, width * 3)  # a writable copy
            rows = torch.sparse.mm(axis_weights(height, side, size), x)  # y, (x c)
            rows = rows.view(size, width, 3).transpose(0, 1).reshape(width, size * 3)
            both = torch.sparse.mm(axis_weights(width, side, size), rows)  # x, (y c)
            resized = both.div_(255).float().view(size, size, 3).permute(2, 1, 0)
        out[i] = (resized - mean) / std
    return out
