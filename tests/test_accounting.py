"""benchmarks/accounting.py: FLOPs of the real SACL step under fake tensors against a count by hand from the plan."""
import json
import sys
from math import ceil, prod
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accounting  # noqa: E402
from label_values import LabelValues  # noqa: E402
from step_benchmark import nnunet_workspace, plans_for_benchmark  # noqa: E402

from nnunet_sacl.method.pooling import mask_pool  # noqa: E402

PLANS = REPO / "plans" / "btcv_like_nnUNetPlans.json"
DATASET_JSON = REPO / "plans" / "btcv_like_dataset.json"
PATCH, BATCH, ORGANS = [16, 32, 32], 2, 13


def conv_flops(batch, c_in, c_out, kernel, out_shape) -> int:
    """A convolution's forward multiply-adds, counted as 2 FLOPs each."""
    return 2 * batch * c_in * c_out * prod(kernel) * prod(out_shape)


def encoder_forward_flops_by_hand(arch: dict, patch, batch) -> list:
    """Forward FLOPs of every convolution of a PlainConvEncoder, from the plan's architecture: each stage has
    n_conv_per_stage 'same'-padded convolutions, the first with the stage's stride."""
    flops, shape, c_in = [], list(patch), 1
    for stage in range(arch["n_stages"]):
        c_out, kernel = arch["features_per_stage"][stage], arch["kernel_sizes"][stage]
        for i in range(arch["n_conv_per_stage"][stage]):
            stride = arch["strides"][stage] if i == 0 else [1] * len(shape)
            shape = [ceil(s / st) for s, st in zip(shape, stride)]
            flops.append(conv_flops(batch, c_in, c_out, kernel, shape))
            c_in = c_out
    return flops, shape, c_in


@pytest.fixture(scope="module")
def tiny():
    plans = plans_for_benchmark(json.loads(PLANS.read_text()), PLANS, "3d_fullres", PATCH, BATCH)
    dataset_json = json.loads(DATASET_JSON.read_text())
    return plans, dataset_json


def test_a_convolution_counted_by_hand():
    """One 3D convolution, forward and backward under fake tensors and fp16 autocast: 2 x multiply-adds forward,
    as many for the weight gradient and as many for the input gradient."""
    fake_mode = accounting.FakeTensorMode()
    with fake_mode:
        conv = torch.nn.Conv3d(4, 8, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        x = torch.empty(2, 4, 6, 20, 20, requires_grad=True)
    counter = accounting.FlopCounterMode(display=False)
    with fake_mode, counter, accounting.fp16_autocast():
        y = conv(x)
        assert y.dtype == torch.float16 and tuple(y.shape) == (2, 8, 6, 10, 10)
        y.float().sum().backward()
    assert counter.get_total_flops() == 3 * conv_flops(2, 4, 8, (1, 3, 3), (6, 10, 10))


def test_sacl_step_flops_equal_the_count_by_hand(tiny):
    """The real SACLPretrainer.train_step (phase 1) at a tiny BTCV-like patch: encoder forward + backward (no input
    gradient for the first convolution), mask pooling's matmul (gradient for the features only), the projection
    head and the loss's similarity matrix (gradients for both operands): every FLOP accounted for by hand."""
    plans, dataset_json = tiny
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    convs, bottleneck, channels = encoder_forward_flops_by_hand(arch, PATCH, BATCH)
    encoder = 3 * sum(convs) - convs[0]
    rows = BATCH * ORGANS
    pool = 2 * (2 * BATCH * (ORGANS + 1) * prod(bottleneck) * channels)    # bmm over all classes, 1 backward bmm
    head = 3 * 2 * rows * (channels * 512 + 512 * 128)                      # forward, input grad, weight grad
    loss = 3 * 2 * rows * rows * 128                                          # z @ z.T and its two gradients
    step = accounting.CountedStep("sacl", accounting.variants.SACLPretrainer, "train_step", "SACL")
    with nnunet_workspace(plans, "3d_fullres"):
        row = accounting.count_step(step, plans, "3d_fullres", dataset_json, ORGANS, peak=False)
    assert row["encoder_flops"] == encoder
    assert row["flops"] == encoder + pool + head + loss
    assert row["patch_size"] == PATCH and row["batch_size"] == BATCH


def test_stock_step_costs_more_and_saves_more_than_sacl(tiny):
    plans, dataset_json = tiny
    rows = {}
    with nnunet_workspace(plans, "3d_fullres"):
        for step in accounting.counted_steps()[:2]:
            rows[step.key] = accounting.count_step(step, plans, "3d_fullres", dataset_json, ORGANS, peak=False)
    stock, sacl = rows["stock"], rows["sacl"]
    assert stock["encoder_flops"] == sacl["encoder_flops"]       # the same encoder does the same work
    assert stock["flops"] > 2 * sacl["flops"]
    assert 0 < sacl["saved_bytes"] < stock["saved_bytes"]
    assert "float16" in sacl["saved_bytes_by_dtype"]              # autocast's dtype, not float32 everywhere
    # SGD with momentum: parameter, gradient and momentum buffer of every trained parameter, float32 (nnU-Net's
    # lowest-resolution deep-supervision output has loss weight 0, so its few parameters get no gradient)
    assert stock["param_grad_optimizer_bytes"] == pytest.approx(3 * stock["parameter_bytes_all_modules"], rel=1e-3)
    assert sacl["param_grad_optimizer_bytes"] < stock["param_grad_optimizer_bytes"] / 2


def test_label_values_let_mask_pool_find_the_organs():
    """Under fake tensors the pooled rows (which organs, which samples) are those of the real computation."""
    generator = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 5, (2, 1, 8, 12, 12), generator=generator, dtype=torch.int16)
    seg[1][seg[1] == 3] = 0                                         # organ 3 absent from sample 1
    features = torch.randn(2, 6, 2, 3, 3, generator=generator)
    _, organs, samples = mask_pool(features, seg, 5)
    fake_mode = accounting.FakeTensorMode(allow_non_fake_inputs=True)
    labels = LabelValues(fake_mode)
    fake_seg = labels.track(seg, torch.device("cpu"))
    with fake_mode:
        fake_features = torch.empty(2, 6, 2, 3, 3)
    with fake_mode, labels:
        pooled, fake_organs, fake_samples = mask_pool(fake_features, fake_seg, 5)
    assert tuple(pooled.shape) == (len(organs), 6)
    assert torch.equal(labels.value(fake_organs), organs) and torch.equal(labels.value(fake_samples), samples)
    out_of_range = labels.track(seg + 5, torch.device("cpu"))
    with fake_mode, labels, pytest.raises(ValueError, match="outside 0..4"):
        mask_pool(fake_features, out_of_range, 5)                               # the label check still runs
