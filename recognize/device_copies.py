"""Copies between the host and a GPU that do not make the host wait (issue 11, "GPU").

Why: reading a CUDA tensor on the host (`.cpu()`, `.item()`, `int(...)`, `.tolist()`) waits for every
kernel queued before it. One such read per box in a segmenter's loop leaves the GPU idle while Python
queues the next box's kernels; a host-to-device copy from ordinary (pageable) memory is staged by the
driver through a pinned bounce buffer and does not overlap anything either. So inputs go up from
pinned memory with `non_blocking=True` (`to_device`), and a stage's per-box results come back into
one pinned host buffer, copied as they are made and waited for when the host reads them (`HostBuffer`).
The host then copies them out into ordinary memory: pinned (page-locked) memory cannot be swapped and
torch's allocator keeps it once freed, so it must not stay with the frames that hold the masks.

On the CPU (and on devices other than CUDA) both are plain copies with the same values: pinned memory
needs a CUDA runtime, and there is nothing to overlap. The tests run the same calls on the CPU; the
segmenters' tests check that their GPU-shaped path (a chunk's masks upsampled and copied together)
gives the masks of their CPU path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["HostBuffer", "is_cuda", "to_device"]


def is_cuda(device: Any) -> bool:
    """Whether `device` (a string, `torch.device` or index) is a CUDA device."""
    return torch.device(device).type == "cuda"


def to_device(data: np.ndarray | torch.Tensor, device: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`data` on `device` (and in `dtype`, converted there): through pinned memory and without waiting
    where `device` is CUDA, a plain `.to` elsewhere. Converting after the copy keeps a uint8 image's
    transfer at a quarter of a float one's. A tensor that is pinned already is sent as it is: the caller
    must not change it until the device has used it."""
    if isinstance(data, np.ndarray):  # a read-only array (a resize made ahead) is copied, not shared
        data = np.array(data) if not data.flags.writeable else np.ascontiguousarray(data)
    tensor = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    if is_cuda(device) and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


class HostBuffer:
    """A host array filled from device tensors as they are made (`put`), read once (`numpy`).

    On CUDA the buffer is pinned and every `put` is an asynchronous copy queued behind the kernels that
    make its value; `numpy()` waits for them, then copies the values out into ordinary memory (a memcpy
    per image, against pinned memory held for the frames' life). Elsewhere `put` is an ordinary copy
    and `numpy()` returns the buffer itself. Every element must be `put`: the buffer starts uninitialised."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> None:
        self.device = torch.device(device)
        self.asynchronous = is_cuda(self.device)
        self.host = torch.empty(shape, dtype=dtype, pin_memory=self.asynchronous)

    def put(self, index: int | slice, value: torch.Tensor) -> None:
        """Copy `value` into `host[index]` (shapes must match), without waiting on CUDA."""
        self.host[index].copy_(value, non_blocking=self.asynchronous)

    def numpy(self) -> np.ndarray:
        """The filled array; on CUDA, once the copies have landed, in ordinary memory."""
        if not self.asynchronous:
            return self.host.numpy()
        torch.cuda.current_stream(self.device).synchronize()
        out = np.empty(tuple(self.host.shape), dtype=self.host.numpy().dtype)
        np.copyto(out, self.host.numpy())
        self.host = torch.empty(0, dtype=self.host.dtype)  # the pinned block goes back to torch's cache
        return out
