"""`recognize.device_copies`: host <-> device copies that keep their values on every device and, on
CUDA, neither stage through pageable memory nor make the host wait until it reads the results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recognize.device_copies import HostBuffer, is_cuda, to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_is_cuda_reads_every_spelling_of_a_device():
    assert is_cuda("cuda") and is_cuda("cuda:1") and is_cuda(torch.device("cuda", 0))
    assert not is_cuda("cpu") and not is_cuda(torch.device("cpu")) and not is_cuda("meta")


def test_a_read_only_array_is_copied_without_a_warning():
    import warnings

    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    image.flags.writeable = False  # a resize made ahead (`Frame.prepare_ahead`)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = to_device(image, "cpu")
    moved += 1  # its own memory: the frame's array is not touched
    assert image[0, 0, 0] == 0 and moved[0, 0, 0] == 1


def test_to_device_keeps_the_values_and_converts_after_the_copy():
    image = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)[:, ::-1]  # not contiguous
    moved = to_device(image, "cpu")
    assert moved.dtype == torch.uint8 and moved.device.type == "cpu"
    np.testing.assert_array_equal(moved.numpy(), image)
    as_float = to_device(image, "cpu", torch.float32)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, torch.from_numpy(image.copy()).float())
    tensor = torch.randn(3, 5)
    assert to_device(tensor, "cpu") is tensor  # nothing to copy
    assert to_device(tensor, "cpu", torch.bfloat16).dtype == torch.bfloat16


def test_a_host_buffer_is_filled_by_slices_and_rows():
    buffer = HostBuffer((4, 2, 3), torch.bool, "cpu")
    assert not buffer.asynchronous and not buffer.host.is_pinned()
    buffer.put(slice(0, 2), torch.ones(2, 2, 3, dtype=torch.bool))
    buffer.put(2, torch.zeros(2, 3, dtype=torch.bool))
    buffer.put(3, torch.tensor([[True, False, True], [False, False, True]]))
    out = buffer.numpy()
    assert out.dtype == bool and out.shape == (4, 2, 3)
    assert out[:2].all() and not out[2].any() and out[3].tolist() == [[True, False, True], [False, False, True]]
    with pytest.raises(RuntimeError):  # a value of another shape is an error, not a silent broadcast gap
        buffer.put(slice(0, 2), torch.ones(3, 2, 3, dtype=torch.bool))


@cuda
def test_on_cuda_inputs_go_up_pinned_and_results_come_back_without_a_wait_per_put():
    image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    buffer = HostBuffer((8, 64, 48), torch.bool, "cuda")
    assert buffer.asynchronous and buffer.host.is_pinned()
    torch.cuda.set_sync_debug_mode("error")  # any host sync below raises
    try:
        moved = to_device(image, "cuda", torch.float32)
        for i in range(8):
            buffer.put(slice(i, i + 1), (moved[None, :, :, i % 3] > 127))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = buffer.numpy()
    np.testing.assert_array_equal(out, np.stack([image[:, :, i % 3] > 127 for i in range(8)]))
    assert out.flags.writeable and out.base is None  # ordinary memory of its own, not the pinned buffer
