"""Binary ResNet V1/V2 (bmxnet_models/resnet.py): weights against MXNet's model zoo, structure
and options, 1-bit against 32-bit blocks with shared weights, fixed architectures, export, and
the memory `lightnas summary` reports against a hand count."""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
from mxnet import gluon, nd
from mxnet.gluon import nn

import bmxnet_models
from bmxnet_models.binary import QConv2D
from bmxnet_models.enas.unit import EnasUnit, find_units, fixed_choices
from bmxnet_models.resnet import (BasicBlockV1, BasicBlockV2, BottleNeckBlockV1,
                                  BottleNeckBlockV2, stage_widths)
from lightnas_cli.errors import ConfigError

from conftest import REPO, cli_env
from helpers import assert_export_round_trip, copy_active_parameters, random_data, randomize

TINY = dict(classes=3, base_channels=4, stem="thumbnail")
NAMES = [f"resnet{d}_v{v}" for d in (18, 34, 50, 101, 152) for v in (1, 2)]


def run_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`lightnas ARGS` with one OpenMP thread (2 shared cores: more threads crawl)."""
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "lightnas_cli.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def conv_dense_weights(net: gluon.Block) -> list[tuple[int, ...]]:
    """Shapes of every convolution and dense weight (rank >= 2), biases and norms left out."""
    return [tuple(p.shape) for name, p in net.collect_params().items()
            if name.endswith("weight") and len(p.shape) >= 2]


@pytest.mark.parametrize("name", ["resnet18_v1", "resnet18_v2", "resnet50_v1", "resnet50_v2"])
def test_conv_and_dense_weights_equal_mxnet_model_zoo(name: str) -> None:
    from mxnet.gluon.model_zoo import vision

    x = nd.zeros((1, 3, 224, 224))
    reference = vision.get_model(name, pretrained=False, classes=1000)  # offline: no weights
    reference.initialize()
    reference(x)
    ours = bmxnet_models.get_model(name, classes=1000, stem="imagenet")
    ours.initialize()
    ours(x)
    expected, got = conv_dense_weights(reference), conv_dense_weights(ours)
    assert collections.Counter(got) == collections.Counter(expected)
    assert sum(int(np.prod(s)) for s in got) == sum(int(np.prod(s)) for s in expected)
    # Every shortcut is a binary 1x1 convolution, as in MXNet's zoo (with BatchNorm in V1).
    shortcuts = [b.downsample if isinstance(b.downsample, QConv2D) else b.downsample[0]
                 for b in ours.blocks if b.downsample is not None]
    assert len(shortcuts) == (3 if name.startswith("resnet18") else 4)
    assert all(isinstance(c, QConv2D) and c.kernel_size == (1, 1) and c.is_binary
               for c in shortcuts)


def test_every_size_is_registered_with_its_block_counts() -> None:
    counts = {18: 8, 34: 16, 50: 16, 101: 33, 152: 50}
    for name in NAMES:
        depth = int(name[6:name.index("_")])
        net = bmxnet_models.get_model(name, **TINY)
        assert net.num_blocks == counts[depth] == len(net.blocks)
        kind = BasicBlockV1 if depth < 50 else BottleNeckBlockV1
        if name.endswith("v2"):
            kind = BasicBlockV2 if depth < 50 else BottleNeckBlockV2
        assert all(type(b) is kind for b in net.blocks)
    assert stage_widths(18) == (64, 128, 256, 512)
    assert stage_widths(50) == (256, 512, 1024, 2048)
    assert set(bmxnet_models.model_options("resnet50_v1")) >= {
        "classes", "stem", "base_channels", "grad_cancel", "weight_scaling", "in_channels",
        "enas", "bits", "activation", "binary_padding", "fp_shortcut", "bottleneck_binary"}


@pytest.mark.parametrize("name", ["resnet18_v1", "resnet18_v2", "resnet50_v1", "resnet50_v2"])
@pytest.mark.parametrize("stem", ["thumbnail", "imagenet"])
def test_output_shape_any_input_size_hybridized(name: str, stem: str) -> None:
    for shape in [(2, 3, 16, 16), (1, 1, 7, 9)]:
        net = bmxnet_models.get_model(name, **{**TINY, "stem": stem})
        net.initialize()
        net.hybridize()
        assert net(random_data(shape)).shape == (shape[0], 3)


def _convs(block) -> list[QConv2D]:
    return [c for c in block._children.values() if isinstance(c, QConv2D)]


def test_v1_basic_block_layout_and_binary_shortcut() -> None:
    net = bmxnet_models.get_model("resnet18_v1", **TINY)
    block = net.blocks[2]  # first of stage 2: stride 2, 4 -> 8 channels
    assert block.stride == 2 and all(c.is_binary for c in _convs(block))
    assert [c.kernel_size for c in _convs(block)] == [(3, 3), (3, 3)]
    shortcut = list(block.downsample._children.values())
    assert [type(c) for c in shortcut] == [QConv2D, nn.BatchNorm]
    assert shortcut[0].is_binary and shortcut[0].kernel_size == (1, 1)
    assert shortcut[0].strides == (2, 2)
    assert net.blocks[1].downsample is None
    fp = bmxnet_models.get_model("resnet18_v1", fp_shortcut=True, **TINY).blocks[2]
    assert not fp.downsample[0].is_binary and all(c.is_binary for c in _convs(fp))
    # The ImageNet stem of V1 ends with a BatchNorm: a sign of ReLU outputs would be all +1.
    stem = bmxnet_models.get_model("resnet18_v1", **{**TINY, "stem": "imagenet"}).features
    assert [type(stem[i]) for i in range(5)] == [nn.Conv2D, nn.BatchNorm, nn.Activation,
                                                 nn.MaxPool2D, nn.BatchNorm]


def test_v2_blocks_are_pre_activation_with_conv_shortcut_and_bottleneck_strides() -> None:
    net = bmxnet_models.get_model("resnet50_v2", **TINY)
    block = net.blocks[3]  # first of stage 2
    assert isinstance(block.downsample, QConv2D) and block.downsample.is_binary
    assert [c.kernel_size for c in (block.conv1, block.conv2, block.conv3)] == \
        [(1, 1), (3, 3), (1, 1)]
    assert [c.strides for c in (block.conv1, block.conv2, block.conv3)] == \
        [(1, 1), (2, 2), (1, 1)]
    assert (block.conv1.channels, block.conv2.channels, block.conv3.channels) == (8, 8, 32)
    v1 = bmxnet_models.get_model("resnet50_v1", **TINY).blocks[3]
    assert [c.strides for c in (v1.conv1, v1.conv2, v1.conv3)] == [(2, 2), (1, 1), (1, 1)]
    # Stage 1 of a bottleneck net widens 4 -> 16 at stride 1: a 1x1 shortcut there too.
    assert net.blocks[0].downsample is not None and net.blocks[0].stride == 1


@pytest.mark.parametrize("name", ["resnet50_v1", "resnet50_v2"])
def test_bottleneck_binary_3x3_keeps_the_1x1s_full_precision(name: str) -> None:
    default = bmxnet_models.get_model(name, **TINY).blocks[0]
    assert [c.is_binary for c in (default.conv1, default.conv2, default.conv3)] == [True] * 3
    block = bmxnet_models.get_model(name, bottleneck_binary="3x3", **TINY).blocks[0]
    assert [c.is_binary for c in (block.conv1, block.conv2, block.conv3)] == \
        [False, True, False]
    full = bmxnet_models.get_model(name, bits=32, **TINY).blocks[0]
    assert not any(c.is_binary for c in (full.conv1, full.conv2, full.conv3))
    # For basic blocks (all 3x3) the option changes nothing.
    a = bmxnet_models.get_model("resnet18_v2", bottleneck_binary="3x3", **TINY).blocks[2]
    assert all(c.is_binary for c in _convs(a))


@pytest.mark.parametrize("options, message", [
    ({"bottleneck_binary": "1x1"}, "bottleneck_binary"),
    ({"stem": "cifar"}, "stem"),
    ({"bits": 8}, "bits"),
    ({"base_channels": 0}, "base_channels"),
    ({"binary_padding": "one"}, "binary_padding"),
    ({"depth": 50}, "no option"),
])
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bmxnet_models.get_model("resnet50_v1", **{**TINY, **options})


@pytest.mark.parametrize("name", ["resnet18_v1", "resnet50_v2"])
def test_one_and_32_bit_choices_share_weights_but_compute_differently(name: str) -> None:
    net = bmxnet_models.get_model(name, enas=True, **TINY)
    units = find_units(net)
    assert len(units) == net.num_blocks and all(isinstance(u, EnasUnit) for u in units)
    net.initialize()
    x = random_data((2, 3, 8, 8))
    net(x)
    randomize(net)
    unit = units[3]
    one, thirty_two = unit.candidates
    assert one.bits == 1 and thirty_two.bits == 32
    # One set of parameters: the same Parameter objects in both candidates.
    assert [id(p) for p in one.collect_params().values()] == \
        [id(p) for p in thirty_two.collect_params().values()]
    for u in units:
        u.select({"bits": 1})
    before = {k: p.data().copy() for k, p in net.collect_params().items()}
    out_one = net(x).asnumpy()
    unit.select({"bits": 32})
    out_32 = net(x).asnumpy()
    assert np.abs(out_one - out_32).max() > 1e-3
    # Same block alone, same input: different outputs, and the weights were not touched.
    h = random_data((2, unit.active_candidate.in_channels, 4, 4), seed=5)
    assert np.abs(one(h).asnumpy() - thirty_two(h).asnumpy()).max() > 1e-3
    for key, param in net.collect_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), before[key].asnumpy())
    unit.select({"bits": 1})
    np.testing.assert_array_equal(net(x).asnumpy(), out_one)


@pytest.mark.parametrize("name", ["resnet34_v1", "resnet50_v1", "resnet18_v2", "resnet50_v2"])
@pytest.mark.parametrize("fp_shortcut", [False, True])
def test_fixed_architecture_matches_the_supernet_and_exports(name: str, fp_shortcut: bool,
                                                             tmp_path) -> None:
    options = dict(TINY, fp_shortcut=fp_shortcut, in_channels=1)
    supernet = bmxnet_models.get_model(name, enas=True, **options)
    supernet.initialize()
    x = random_data((2, 1, 8, 8))
    supernet(x)
    randomize(supernet)
    units = find_units(supernet)
    values = [{"bits": 32 if i % 3 == 1 else 1} for i in range(len(units))]
    for unit, value in zip(units, values):
        unit.select(value)
    with fixed_choices(values):
        plain = bmxnet_models.get_model(name, enas=True, **options)
    assert not find_units(plain)
    assert [b.bits for b in plain.blocks] == [v["bits"] for v in values]
    plain.initialize()
    plain(x)
    copy_active_parameters(supernet, plain)
    plain.hybridize()
    expected = supernet(x).asnumpy()
    # Random BatchNorm statistics and +-1 weights make outputs large (~1e6): compare to scale.
    assert np.abs(plain(x).asnumpy() - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())
    with fixed_choices(values):
        exported = bmxnet_models.get_model(name, enas=True, **options)
    assert_export_round_trip(exported, x, str(tmp_path / name), epoch=1)


def test_backward_reaches_every_weight_of_a_binary_net() -> None:
    from mxnet import autograd

    net = bmxnet_models.get_model("resnet50_v1", **TINY)
    net.initialize()
    x = random_data((4, 3, 8, 8))
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), nd.array([0, 1, 2, 0]))
    loss.backward()
    for name, param in net.collect_params().items():
        if param.grad_req != "null":
            assert np.abs(param.grad().asnumpy()).sum() > 0, name


def hand_count(depth: int, version: int, fp_shortcut: bool = False,
               bottleneck_binary: str = "all", classes: int = 1000,
               in_channels: int = 3) -> tuple[int, int]:
    """(1-bit, 32-bit) parameters of an all-binary ResNet with the ImageNet stem, written
    from He et al.'s table, independently of the model code. BatchNorms count 2 per channel
    (scale and shift), as `lightnas summary` counts them."""
    kind, blocks = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}[depth]
    base = 64
    binary = 0
    fp = 7 * 7 * in_channels * base + 2 * base  # stem conv + its BatchNorm
    if version == 1:
        fp += 2 * base  # V1's BatchNorm after the max pooling
    c_in = base
    for stage, count in enumerate(blocks):
        width = base * 2 ** stage * (4 if kind == "bottleneck" else 1)
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            if kind == "basic":
                convs = [(c_in, width, 3, True), (width, width, 3, True)]
            else:
                ones = bottleneck_binary == "all"
                convs = [(c_in, width // 4, 1, ones), (width // 4, width // 4, 3, True),
                         (width // 4, width, 1, ones)]
            for cin, cout, k, is_binary in convs:
                weights = cin * cout * k * k
                binary, fp = (binary + weights, fp) if is_binary else (binary, fp + weights)
                fp += 2 * (cout if version == 1 else cin)  # V1: BN after, V2: BN before
            if stride != 1 or c_in != width:
                if fp_shortcut:
                    fp += c_in * width
                else:
                    binary += c_in * width
                if version == 1:
                    fp += 2 * width
            c_in = width
    if version == 2:
        fp += 2 * c_in  # final BatchNorm
    fp += c_in * classes + classes  # classifier
    return binary, fp


@pytest.mark.parametrize("name, options", [
    ("resnet18_v1", {}), ("resnet18_v2", {}), ("resnet50_v1", {}), ("resnet50_v2", {}),
    ("resnet18_v1", {"fp_shortcut": True}),
    ("resnet50_v2", {"fp_shortcut": True, "bottleneck_binary": "3x3"}),
])
def test_summary_memory_equals_a_hand_count(name: str, options: dict, tmp_path) -> None:
    args = ["summary", name, "--json"]
    for key, value in options.items():
        args += ["-o", f"{key}={str(value).lower()}"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["input_shape"] == [3, 224, 224] and data["classes"] == 1000
    binary, fp = hand_count(int(name[6:8]), int(name[-1]), **options)
    totals = data["totals"]
    assert (totals["params_binary"], totals["params_float"]) == (binary, fp)
    assert totals["memory_bytes"] == binary / 8 + 4 * fp
    if name == "resnet18_v1" and not options:
        # The figure the README quotes (3.36 MiB).
        assert totals["memory_bytes"] == 3_523_232


def test_zoo_imports_no_search_package() -> None:
    code = ("import sys, bmxnet_models.resnet, bmxnet_models; "
            "bmxnet_models.get_model('resnet50_v2', enas=True, base_channels=4); "
            "assert not [m for m in sys.modules if m.startswith('lightnas_cli.search')], "
            "sorted(m for m in sys.modules if m.startswith('lightnas_cli'))")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["resnet18_v2", "resnet50_v1"])
def test_zoo_quantizer_options_reach_every_binary_conv_and_export(name: str, tmp_path) -> None:
    options = dict(TINY, weight_scaling="mean", activation="approx_sign",
                   binary_padding="minus_one", grad_cancel=0.5)
    net = bmxnet_models.get_model(name, **options)
    binary = [layer for block in net.blocks for layer in _walk(block)
              if isinstance(layer, QConv2D) and layer.is_binary]
    assert binary and all(c.weight_scaling == "mean" and c.activation == "approx_sign" and
                          c.binary_padding == "minus_one" and c.clip == 0.5 for c in binary)
    assert any(c.pads_with_minus_one for c in binary)
    assert_export_round_trip(net, random_data((2, 3, 8, 8)), str(tmp_path / name), epoch=3)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)
