"""growbatch.models: shapes, exact parameter counts, channels_last, determinism, ghost BN, every error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from growbatch.models import MODEL_NAMES, AirbenchSmall, DigitsCNN, MnistCNN, ResNet18, ResNet20, WideResNet, build_model

# name, in_channels, image_size, parameters for 10 classes
MODELS = [
    ("cnn", 1, 8, 67_754),
    ("mnist-cnn", 1, 28, 1_663_978),
    ("wrn-16-4", 3, 32, 2_748_890),
    ("resnet18", 3, 32, 11_173_962),
    ("resnet20", 3, 32, 269_722),
    ("airbench-small", 3, 32, 295_480),
]


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def batch(in_channels: int, image_size: int, size: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def wrn_parameters(depth: int, width: int, in_channels: int, num_classes: int) -> int:
    """WRN-d-k's parameter count from its definition (Zagoruyko & Komodakis, Table 1), not from the code."""
    blocks, channels = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
    total = in_channels * 16 * 9  # stem
    for stage in range(3):
        a, b = channels[stage], channels[stage + 1]
        total += 2 * a + 9 * a * b + 2 * b + 9 * b * b + (a * b if a != b else 0)  # first block; 1x1 shortcut
        total += (blocks - 1) * (2 * b + 9 * b * b + 2 * b + 9 * b * b)
    return total + 2 * channels[3] + channels[3] * num_classes + num_classes  # final BN + classifier


def resnet20_parameters(in_channels: int, num_classes: int) -> int:
    """ResNet-20's count from He et al. section 4.2 (3 stages of 3 blocks, 16/32/64, parameter-free shortcuts)."""
    total, previous = in_channels * 16 * 9 + 2 * 16, 16  # stem conv + BN
    for channels in (16, 32, 64):
        for _ in range(3):
            total += 9 * previous * channels + 9 * channels * channels + 4 * channels
            previous = channels
    return total + 64 * num_classes + num_classes


def airbench_small_parameters(in_channels: int, num_classes: int) -> int:
    """AirbenchSmall's count from its definition: a 3x3 stem of 24 + BN, blocks of two 3x3 convs + BN each
    (32, 64, 128), a linear head without bias."""
    total, previous = in_channels * 24 * 9 + 2 * 24, 24
    for channels in (32, 64, 128):
        total += 9 * previous * channels + 9 * channels * channels + 4 * channels
        previous = channels
    return total + 128 * num_classes


def test_model_names():
    assert MODEL_NAMES == ("cnn", "mnist-cnn", "wrn-16-4", "resnet18", "resnet20", "airbench-small")


def test_airbench_small_counts_and_shape_of_its_features():
    """The count follows from the definition; three max-pools take 32 x 32 to 4 x 4 before the global max-pool."""
    model = build_model("airbench-small", in_channels=3, num_classes=10, image_size=32)
    assert isinstance(model, AirbenchSmall) and parameter_count(model) == airbench_small_parameters(3, 10)
    assert parameter_count(build_model("airbench-small", in_channels=1, num_classes=7, image_size=28)) == \
        airbench_small_parameters(1, 7)
    assert model.blocks(model.stem(batch(3, 32))).shape == (3, 128, 4, 4)


def test_resnet20_counts_and_padded_shortcuts():
    """The count follows from the paper's definition; a stage's first block passes the subsampled input on."""
    assert parameter_count(build_model("resnet20", in_channels=3, num_classes=10, image_size=32)) == \
        resnet20_parameters(3, 10)
    assert parameter_count(build_model("resnet20", in_channels=1, num_classes=7, image_size=28)) == \
        resnet20_parameters(1, 7)
    block = build_model("resnet20", in_channels=3, num_classes=10, image_size=32).stages[1][0]
    inputs = torch.randn(2, 16, 8, 8)
    passed = block.shortcut(inputs)
    assert passed.shape == (2, 32, 4, 4)
    assert torch.equal(passed[:, 8:24], inputs[:, :, ::2, ::2]) and not passed[:, :8].any() and not passed[:, 24:].any()


@pytest.mark.parametrize("name, in_channels, image_size, parameters", MODELS)
def test_output_shape_and_parameter_count(name, in_channels, image_size, parameters):
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    assert parameter_count(model) == parameters
    assert model(batch(in_channels, image_size)).shape == (3, 10)
    other = build_model(name, in_channels=in_channels + 2, num_classes=7, image_size=image_size)
    assert other(batch(in_channels + 2, image_size, size=2)).shape == (2, 7)


def test_classes_behind_the_names():
    kinds = [type(build_model(name, in_channels=c, num_classes=10, image_size=s)) for name, c, s, _ in MODELS]
    assert kinds == [DigitsCNN, MnistCNN, WideResNet, ResNet18, ResNet20, AirbenchSmall]


@pytest.mark.parametrize("depth, width", [(16, 4), (10, 1), (22, 2), (16, 8)])
def test_wide_resnet_parameters_follow_the_definition(depth, width):
    model = WideResNet(depth, width, num_classes=100, in_channels=3)
    assert parameter_count(model) == wrn_parameters(depth, width, 3, 100)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convolutions) == 1 + 2 * 3 * ((depth - 4) // 6)  # the stem, then two per block, 3 stages of n blocks


def test_wrn_16_4_is_the_papers_network():
    """Zagoruyko & Komodakis (Table 1) and Smith et al. (Section 5.1) give WRN-16-4 as 2.7M parameters (rounded)."""
    count = parameter_count(WideResNet(16, 4))
    assert count == wrn_parameters(16, 4, 3, 10) == 2_748_890
    assert round(count / 1e6, 1) == 2.7


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name, in_channels, image_size, parameters", MODELS)
def test_channels_last_forward_and_backward_match_contiguous(name, in_channels, image_size, parameters):
    in_channels = 3  # with one channel, channels_last and contiguous are the same strides
    torch.manual_seed(0)
    # float64: in float32 the two layouts round differently, and a ReLU input that lands on the other
    # side of zero changes a gradient by far more than rounding (seen in WRN-16-4)
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size).double()
    inputs = batch(in_channels, image_size).double()
    targets = torch.tensor([0, 3, 9])
    nn.functional.cross_entropy(model(inputs), targets).backward()
    expected = [parameter.grad.clone() for parameter in model.parameters()]
    reference = model(inputs).detach()
    model.zero_grad()
    model = model.to(memory_format=torch.channels_last)
    channels_last = inputs.to(memory_format=torch.channels_last)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    outputs = model(channels_last)
    assert relative_error(outputs, reference) < 1e-12
    nn.functional.cross_entropy(outputs, targets).backward()
    assert max(relative_error(p.grad, g) for p, g in zip(model.parameters(), expected)) < 1e-10


@pytest.mark.parametrize("name, in_channels, image_size, parameters", MODELS)
def test_same_seed_same_model(name, in_channels, image_size, parameters):
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)

    first, second, third = build(0), build(0), build(1)
    for (key, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), third.state_dict().values()):
        assert torch.equal(a, b), key
    weights = [key for key, value in first.state_dict().items() if key.endswith("weight") and value.dim() > 1]
    assert all(not torch.equal(first.state_dict()[key], third.state_dict()[key]) for key in weights)
    inputs = batch(in_channels, image_size)
    assert torch.equal(first(inputs), second(inputs))


@pytest.mark.parametrize("name, in_channels, image_size", [
    ("cnn", 1, 4), ("cnn", 3, 32), ("mnist-cnn", 1, 4), ("mnist-cnn", 3, 32), ("wrn-16-4", 1, 4), ("wrn-16-4", 1, 28),
    ("wrn-16-4", 1, 8), ("resnet18", 1, 8), ("resnet18", 1, 28), ("resnet20", 1, 4), ("resnet20", 1, 28),
    ("airbench-small", 1, 8), ("airbench-small", 1, 28), ("airbench-small", 3, 33),
])
def test_every_supported_size_runs(name, in_channels, image_size):
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    assert model(batch(in_channels, image_size, size=2)).shape == (2, 10)


def test_small_cnn_learns_the_digits():
    """The default model passes 90% test accuracy on the digits within two epochs of SGD (96% after one)."""
    from growbatch.data import load_dataset

    dataset = load_dataset("digits")
    mean, std = dataset.mean[0], dataset.std[0]
    x_train, x_test = ((x.float() / 255 - mean) / std for x in (dataset.x_train, dataset.x_test))
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for indices in torch.randperm(dataset.train_size, generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[indices]), dataset.y_train[indices]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == dataset.y_test).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("name, in_channels, image_size, parameters", MODELS)
def test_ghost_batch_norm_replaces_every_batch_norm(name, in_channels, image_size, parameters):
    pytest.importorskip("growbatch.batching.ghost_bn")
    torch.manual_seed(0)
    plain = build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    torch.manual_seed(0)
    ghost = build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size, ghost_batch_size=2)
    assert parameter_count(ghost) == parameters  # same weights, only the statistics change
    inputs = batch(in_channels, image_size, size=4)
    halves = torch.cat([plain(inputs[:2]), plain(inputs[2:])])  # batch norm over each ghost batch of 2
    ghost_outputs = ghost.to(memory_format=torch.channels_last)(inputs.to(memory_format=torch.channels_last))
    # every batch norm was converted: one left behind would normalise over all 4 samples
    torch.testing.assert_close(ghost_outputs, halves, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain(inputs), halves, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: build_model("vgg16", in_channels=3, num_classes=10, image_size=32), ValueError,
     r"unknown model 'vgg16'; valid names: cnn, mnist-cnn, wrn-16-4, resnet18, resnet20, airbench-small"),
    (lambda: build_model(None, in_channels=3, num_classes=10, image_size=32), TypeError,
     r"name should be a str, one of cnn, mnist-cnn, wrn-16-4, resnet18, resnet20, airbench-small, but got NoneType"),
    (lambda: build_model("cnn", in_channels=1, num_classes=10, image_size=10), ValueError,
     r"image_size should be a multiple of 4 for the cnn model \(two 2x2 max-pools\), but got image_size=10; use 8"),
    (lambda: build_model("mnist-cnn", in_channels=1, num_classes=10, image_size=30), ValueError,
     r"image_size should be a multiple of 4 for the mnist-cnn model .* but got image_size=30"),
    (lambda: build_model("wrn-16-4", in_channels=3, num_classes=10, image_size=3), ValueError,
     r"image_size should be at least 4 for a Wide ResNet \(two stride-2 stages\), but got image_size=3"),
    (lambda: build_model("resnet18", in_channels=3, num_classes=10, image_size=7), ValueError,
     r"image_size should be at least 8 for resnet18 \(three stride-2 stages\), but got image_size=7; use the cnn"),
    (lambda: build_model("airbench-small", in_channels=3, num_classes=10, image_size=7), ValueError,
     r"image_size should be at least 8 for airbench-small \(three 2 x 2 max-pools\), but got image_size=7; use the cnn"),
    (lambda: build_model("cnn", in_channels=0, num_classes=10, image_size=8), ValueError,
     r"in_channels should be a positive integer, but got in_channels=0"),
    (lambda: build_model("resnet18", in_channels=3, num_classes=10.0, image_size=32), TypeError,
     r"num_classes should be a positive integer, but got num_classes=10.0 \(float\)"),
    (lambda: build_model("mnist-cnn", in_channels=1, num_classes=10, image_size=True), TypeError,
     r"image_size should be a positive integer, but got image_size=True \(bool\)"),
    (lambda: build_model("cnn", in_channels=1, num_classes=10, image_size=8, ghost_batch_size=0), ValueError,
     r"ghost_batch_size should be a positive integer, but got ghost_batch_size=0"),
    (lambda: WideResNet(depth=15), ValueError,
     r"depth should be 6n \+ 4 with n >= 1 \(10, 16, 22, 28, 40, ...\), but got depth=15"),
    (lambda: WideResNet(depth=4), ValueError, r"depth should be 6n \+ 4 with n >= 1 .* but got depth=4"),
    (lambda: WideResNet(width=0), ValueError, r"width should be a positive integer, but got width=0"),
    (lambda: WideResNet(dropout=1.0), ValueError, r"dropout should be in \[0, 1\), but got dropout=1.0"),
])
def test_errors_name_the_argument_and_the_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_wide_resnet_dropout_is_between_the_convolutions():
    model = WideResNet(10, 1, dropout=0.3)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(d.p == 0.3 for d in dropouts)
    model.eval()
    inputs = batch(3, 8, size=2)
    assert torch.equal(model(inputs), model(inputs))  # dropout is off in eval
