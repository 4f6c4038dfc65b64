"""Arrays survive the Tensor message exactly, and malformed tensors are refused with a clear error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from edge_lam.wire.tensors import TensorError, check, to_msg, to_numpy, to_torch

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.int8]


def sample(dtype: torch.dtype, shape=(2, 3, 5)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=generator, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_round_trip_keeps_dtype_shape_and_bytes(dtype):
    tensor = sample(dtype)
    msg = to_msg(tensor, "hidden_states")
    assert (msg.name, msg.dtype, list(msg.shape)) == ("hidden_states", str(dtype)[6:], [2, 3, 5])
    back = to_torch(msg)
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8", "bool", "float64", "int32"])
def test_numpy_round_trip_keeps_dtype_shape_and_bytes(dtype):
    array = (np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 1.5 - 7).astype(dtype)
    back = to_numpy(to_msg(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_non_contiguous_big_endian_and_scalar_inputs_are_normalised():
    strided = np.arange(12, dtype=">i4").reshape(3, 4).T  # big-endian and transposed
    assert np.array_equal(to_numpy(to_msg(strided)), strided)
    assert to_numpy(to_msg(np.float32(2.5))).shape == ()
    assert torch.equal(to_torch(to_msg(torch.arange(6).reshape(2, 3).T)), torch.arange(6).reshape(2, 3).T)


def python_lines_run(function, *args) -> int:
    """How many lines of Python run inside ``function`` (C loops, such as a memory copy, count as none)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        function(*args)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_python_loop_over_elements(dtype):
    def round_trip(tensor):
        assert torch.equal(to_torch(to_msg(tensor)), tensor)
        assert np.array_equal(to_numpy(to_msg(tensor.float().numpy())), tensor.float().numpy())

    small, large = torch.randn(4, 8).to(dtype), torch.randn(512, 1024).to(dtype)
    assert python_lines_run(round_trip, large) == python_lines_run(round_trip, small)


def test_decoded_torch_tensor_is_writable_and_independent_of_the_message():
    msg = to_msg(torch.zeros(4))
    decoded = to_torch(msg)
    decoded += 1
    assert torch.equal(to_torch(msg), torch.zeros(4))


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "message"),
    [
        ("float33", [2], 8, "unknown dtype 'float33'"),
        ("float32", [2, 3], 20, "20 bytes for shape [2, 3] of float32, expected 24"),
        ("float16", [4], 9, "9 bytes for shape [4] of float16, expected 8"),
        ("int64", [0, 5], 8, "8 bytes for shape [0, 5] of int64, expected 0"),
    ],
)
def test_malformed_tensor_is_refused_with_a_clear_error(dtype, shape, nbytes, message):
    msg = to_msg(np.zeros(1, np.uint8), "bad")
    msg.dtype, msg.shape, msg.data = dtype, shape, bytes(nbytes)
    for decode in (check, to_numpy, to_torch):
        with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")):
            decode(msg)


def test_bfloat16_has_no_numpy_view_and_says_so():
    with pytest.raises(TensorError, match="to_torch"):
        to_numpy(to_msg(torch.zeros(2, dtype=torch.bfloat16)))


def test_unsupported_dtypes_and_types_are_refused_when_encoding():
    with pytest.raises(TensorError, match="cannot encode a list"):
        to_msg([1.0, 2.0])
    with pytest.raises(TensorError, match="complex64"):
        to_msg(np.zeros(2, np.complex64))
    with pytest.raises(TensorError, match="complex64"):
        to_msg(torch.zeros(2, dtype=torch.complex64))
