"""`compare_true_shapes`: Qwen3-VL-MoE's expert transpose decided on the weight's true shape under a
ZeRO-3 load (an empty placeholder whose real shape is `ds_shape`), as one process decides it."""

from __future__ import annotations

import pytest
import torch
from transformers.core_model_loading import Transpose

from qwenvl_ft.models.sharded_loading import compare_true_shapes


class Placeholder:
    """What a ZeRO-3 model holds before its weights are gathered: shape (0,), the real one in ds_shape."""

    def __init__(self, shape):
        self.param = torch.nn.Parameter(torch.empty(0))
        self.param.ds_shape = torch.Size(shape)

    def get_parameter(self, name):
        return self.param


@pytest.mark.parametrize(
    "stored, want, transposed",
    [
        ((4, 64, 128), (4, 128, 64), True),  # the published layout: transposed into the model's
        ((4, 128, 64), (4, 128, 64), False),  # already the model's layout (a sharded save, tiny models)
        ((4, 64, 64), (4, 64, 64), False),  # square: left alone, as one process leaves it
    ],
)
def test_zero3_placeholders_are_compared_by_their_real_shape(stored, want, transposed):
    compare_true_shapes()
    tensor = torch.randn(stored)
    op = Transpose(1, 2, check_dims=True)
    out = op.convert({"w": tensor}, ["w"], ["w"], model=Placeholder(want), full_layer_name="w")["w"]
    assert torch.equal(out, tensor.transpose(1, 2) if transposed else tensor)
    assert out.shape == torch.Size(want)


def test_plain_parameters_keep_transformers_behaviour():
    compare_true_shapes()

    class Plain:
        def get_parameter(self, name):
            return torch.nn.Parameter(torch.empty(4, 128, 64))

    op = Transpose(1, 2, check_dims=True)
    tensor = torch.randn(4, 64, 128)
    out = op.convert({"w": tensor}, ["w"], ["w"], model=Plain(), full_layer_name="w")["w"]
    assert torch.equal(out, tensor.transpose(1, 2))
