"""MeliusNet: the paper's structure, custom strings, the ENAS supernet and string round trips."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import nd
from mxnet.gluon import nn

import bmxnet_models
from bmxnet_models.binary import QConv2D
from bmxnet_models.enas.meliusnet import custom_string_from_values, values_from_custom_string
from lightnas_cli.search.enas.space import (architecture_from_custom_string,
                                           architecture_to_custom_string)
from bmxnet_models.meliusnet import (MELIUSNET_SPEC, CeilMaxPool2D, DenseBlock, ImprovementBlock,
                                     Transition,
                                     meliusnet22, meliusnet29, meliusnet42, meliusnet59,
                                     size_layout)
from lightnas_cli import costs
from lightnas_cli.errors import ArchitectureError, ConfigError
from bmxnet_models.enas.unit import find_units, fixed_choices, hybridize_supernet

from helpers import (assert_export_round_trip, assert_matches_supernet, copy_active_parameters,
                     random_data, randomize)

TINY = dict(classes=5, stem="thumbnail", base_channels=8, in_channels=1)
SKIP = "replace_by_skip_connection"


def _random_values(count, seed):
    rng = np.random.RandomState(seed)
    return [{SKIP: bool(rng.rand() < 0.5)} for _ in range(count)]


@pytest.mark.parametrize("size,constructor,widths,final", [
    (22, meliusnet22, (160, 224, 256), 512),
    (29, meliusnet29, (128, 192, 256), 640),
    (42, meliusnet42, (160, 256, 416), 1056),
    (59, meliusnet59, (192, 320, 544), 1312),
])
def test_paper_block_counts_and_transition_widths(size, constructor, widths, final):
    blocks = {22: (4, 5, 4, 4), 29: (4, 6, 8, 6), 42: (5, 8, 14, 10), 59: (6, 12, 24, 12)}
    assert MELIUSNET_SPEC[size][0] == blocks[size]
    net = constructor()
    assert net.transition_widths == widths and net.out_features == final
    per_stage = [len(getattr(net, f"stage{i + 1}")._children) for i in range(4)]
    assert per_stage == [2 * n for n in blocks[size]]  # a dense + an improvement block each
    assert net.output._in_units == final
    # stage widths grow by the growth rate 64 per dense block
    assert [b.in_channels for b in net.stage1._children.values()][:4] == [64, 128, 128, 192]
    assert len(find_units(constructor(enas=True))) == 2 * sum(blocks[size])


def test_meliusnet22_enas_has_34_decisions():
    units = find_units(meliusnet22(enas=True, **TINY))
    assert len(units) == 34
    assert all(unit.choices == {SKIP: [True, False]} for unit in units)
    assert not units[0].share_parameters
    skip_dense, dense = units[0].candidates
    assert skip_dense.conv.kernel_size == (1, 1) and skip_dense.conv.padding == (0, 0)
    assert dense.conv.kernel_size == (3, 3) and dense.conv.padding == (1, 1)
    assert skip_dense.conv.weight is not dense.conv.weight  # separate weights per choice
    identity, improvement = units[1].candidates
    assert not identity.collect_params().keys() and improvement.conv.kernel_size == (3, 3)


def test_structure_stems_and_transitions():
    net = meliusnet22(base_channels=16, classes=3)
    kinds = [type(child) for child in net.stem._children.values()]
    assert kinds == [nn.Conv2D, nn.BatchNorm, nn.Activation, nn.Conv2D, nn.BatchNorm,
                     nn.Activation, nn.Conv2D, nn.BatchNorm, nn.Activation, nn.MaxPool2D]
    groups = [c._kwargs["num_group"] for c in net.stem._children.values()
              if isinstance(c, nn.Conv2D)]
    assert groups == [1, 4, 8]
    assert isinstance(net.transition1, Transition)
    assert [type(c) for c in net.transition1._children.values()] == [
        nn.BatchNorm, CeilMaxPool2D, nn.Activation, nn.Conv2D]
    for block in net.blocks:
        assert isinstance(block, (DenseBlock, ImprovementBlock))
        assert isinstance(block.conv, QConv2D) and block.conv.is_binary
    options = dict(activation="approx_sign", binary_padding="minus_one", weight_scaling="mean",
                   grad_cancel=1.3)
    net = bmxnet_models.get_model("meliusnet29", **options, **TINY)
    conv = net.blocks[0].conv
    assert (conv.activation, conv.binary_padding, conv.weight_scaling, conv.clip) == \
        ("approx_sign", "minus_one", "mean", 1.3)
    with pytest.raises(ConfigError, match="divisible by 16"):
        meliusnet22(base_channels=8)
    with pytest.raises(ConfigError, match="stem"):
        meliusnet22(stem="cifar")
    with pytest.raises(ConfigError, match="activation"):
        meliusnet22(activation="tanh")


def test_ceil_max_pool_by_hand():
    pool = CeilMaxPool2D()
    x = nd.array(np.arange(9, dtype=np.float32).reshape((1, 1, 3, 3)) - 20)
    # windows {0,1,3,4}, {2,5}, {6,7}, {8} of the values -20..-12
    np.testing.assert_array_equal(pool(x).asnumpy()[0, 0], [[-16, -15], [-13, -12]])
    assert pool(nd.ones((1, 2, 1, 1))).shape == (1, 2, 1, 1)
    assert pool(nd.ones((1, 2, 4, 6))).shape == (1, 2, 2, 3)


@pytest.mark.parametrize("stem,shape", [("thumbnail", (2, 1, 8, 8)), ("thumbnail", (1, 3, 7, 9)),
                                        ("imagenet", (2, 3, 16, 16)), ("imagenet", (1, 1, 9, 11))])
def test_output_shapes_with_both_stems(stem, shape):
    net = meliusnet22(classes=5, stem=stem, base_channels=16)
    net.initialize()
    net.hybridize()
    assert net(random_data(shape)).shape == (shape[0], 5)


def test_improvement_block_adds_to_the_newest_channels_only():
    block = ImprovementBlock(2, 5, replace_by_skip_connection=False)
    block.initialize()
    x = random_data((1, 5, 4, 4))
    block(x)
    randomize(block)
    out = block(x).asnumpy()
    improvement = block.conv(block.bn(x)).asnumpy()
    np.testing.assert_array_equal(out[:, :3], x.asnumpy()[:, :3])
    np.testing.assert_allclose(out[:, 3:], x.asnumpy()[:, 3:] + improvement, rtol=1e-6)
    skipped = ImprovementBlock(2, 5, replace_by_skip_connection=True)
    np.testing.assert_array_equal(skipped(x).asnumpy(), x.asnumpy())
    assert not skipped.collect_params().keys()
    dense = DenseBlock(2, 5, replace_by_skip_connection=True)
    dense.initialize()
    assert dense(x).shape == (1, 7, 4, 4)  # 1x1 with padding 0 keeps the size: concat fits


def test_custom_string_builds_the_letters():
    net = bmxnet_models.get_model("meliusnet_custom:DTSI", **TINY)
    assert net.layout == "DTSI"
    first, = net.stage1._children.values()
    skip, improve = net.stage2._children.values()
    assert isinstance(first, DenseBlock) and first.conv.kernel_size == (3, 3)
    assert isinstance(skip, DenseBlock) and skip.conv.kernel_size == (1, 1)
    assert skip.conv.padding == (0, 0) and isinstance(improve, ImprovementBlock)
    assert net.transition_widths == (8,)  # (8 + 8) / 2: the generic custom reduction
    net.initialize()
    assert net(random_data((2, 1, 8, 8))).shape == (2, 5)
    assert "meliusnet_custom:<DIST string>" in bmxnet_models.available_models()


@pytest.mark.parametrize("text,message", [
    ("DTXI", r"unknown letter 'X' at position 3 \(DT\[X\]I\)"),
    ("DTdI", r"unknown letter 'd' at position 3 .*upper case"),
    ("IDTD", r"'I' at position 1 \(\[I\]DTD\) comes before any dense block"),
    ("TDI", r"transition 'T' at position 1 .*empty stage"),
    ("DTTD", r"transition 'T' at position 3 .*empty stage"),
    ("DIT", r"ends with a transition 'T' at position 3"),
    ("", r"the string is empty"),
])
def test_malformed_custom_strings_name_the_position(text, message):
    with pytest.raises(ArchitectureError, match=message):
        bmxnet_models.get_model(f"meliusnet_custom:{text}", **TINY)


def test_sized_custom_strings_need_three_transitions():
    with pytest.raises(ArchitectureError, match="exactly 3 transitions 'T'.*found 1"):
        bmxnet_models.get_model("meliusnet22_custom:DTSI", **TINY)
    with pytest.raises(ArchitectureError, match="position 8 .*number 4"):
        bmxnet_models.get_model("meliusnet22_custom:DTDTDTDTD", **TINY)
    with pytest.raises(ConfigError, match="fixed architecture"):
        bmxnet_models.get_model("meliusnet_custom:DI", enas=True, **TINY)
    with pytest.raises(ConfigError, match="unknown model family"):
        bmxnet_models.get_model("meliusnet_costum:DI", **TINY)


def test_full_size_custom_string_equals_the_zoo_network():
    zoo = meliusnet22(**TINY)
    custom = bmxnet_models.get_model(f"meliusnet22_custom:{size_layout(22)}", **TINY)
    assert size_layout(22).count("D") == 17 and size_layout(22).count("T") == 3
    for net in (zoo, custom):
        net.initialize()
    shapes = [[p.shape for p in net.collect_params().values()] for net in (zoo, custom)]
    assert shapes[0] == shapes[1] and custom.transition_widths == zoo.transition_widths


def test_values_to_string_and_back():
    values = _random_values(34, seed=4)
    name = custom_string_from_values(22, values)
    assert name.startswith("meliusnet22_custom:") and name.count("T") == 3
    assert values_from_custom_string(name) == (22, values)
    # hand example: stage 1 keeps everything but skips block 2's dense and block 3's improvement
    hand = ([{SKIP: False}, {SKIP: False}, {SKIP: True}, {SKIP: False}, {SKIP: False},
             {SKIP: True}, {SKIP: False}, {SKIP: False}] + [{SKIP: False}] * 26)
    assert custom_string_from_values(22, hand).split(":")[1].split("T")[0] == "DISIDDI"
    with pytest.raises(ArchitectureError, match="stage 2 has 4 dense blocks"):
        values_from_custom_string("meliusnet22_custom:DDDDTDDDDTDDDDTDDDD")
    with pytest.raises(ArchitectureError, match="'I' at position 3 does not follow"):
        values_from_custom_string("meliusnet22_custom:DIIDDDTDDDDDTDDDDTDDDD")
    with pytest.raises(ArchitectureError, match="no ENAS search space"):
        values_from_custom_string("meliusnet_custom:DTSI")
    with pytest.raises(ArchitectureError, match="34 searchable units"):
        custom_string_from_values(22, values[:-1])


@pytest.mark.parametrize("seed", [0, 7])
def test_derived_architecture_round_trip_has_same_structure_params_and_outputs(seed):
    values = _random_values(34, seed)
    name = custom_string_from_values(22, values)
    arch = architecture_from_custom_string(name, 5, [1, 8, 8], TINY)
    assert len(arch.decisions) == 34 and arch.values() == values
    assert arch.decisions[0].name == "stage1.dense1"
    assert arch.decisions[-1].name == "stage4.improve4"
    assert {d.kind for d in arch.decisions} <= {"skip", "keep"}
    assert architecture_to_custom_string(arch) == name

    with fixed_choices(arch.values()):
        derived = bmxnet_models.get_model("meliusnet22", enas=True, **arch.model_options,
                                          classes=5)
    assert not find_units(derived)
    custom = bmxnet_models.get_model(name, **TINY)
    x = random_data((2, 1, 8, 8))
    for net in (derived, custom):
        net.initialize()
        net(x)
    layers = [costs.profile(net, (1, 8, 8), norm_layers=True) for net in (derived, custom)]
    assert [(c.layer_type, c.output_shape, c.params, c.macs) for c in layers[0]] == \
        [(c.layer_type, c.output_shape, c.params, c.macs) for c in layers[1]]
    totals = [costs.summarize(layer_list) for layer_list in layers]
    assert totals[0] == totals[1] and totals[0].params_binary > 0
    randomize(derived, seed)
    copy_active_parameters(derived, custom)
    np.testing.assert_allclose(custom(x).asnumpy(), derived(x).asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True])
def test_fixed_choices_network_matches_supernet_selection(hybridize):
    options = dict(TINY, activation="approx_sign", binary_padding="minus_one")
    supernet = meliusnet22(enas=True, **options)
    supernet.initialize()
    x = random_data((2, 1, 8, 8))
    supernet(x)
    choices = _random_values(34, seed=3)
    for unit in find_units(supernet):  # every candidate gets its parameters' shapes
        for index in range(2):
            unit._active = index
            supernet(x)
    randomize(supernet)
    for unit, values in zip(find_units(supernet), choices):
        unit.select(values)
    if hybridize:
        hybridize_supernet(supernet)
    with fixed_choices(choices):
        plain = meliusnet22(enas=True, **options)
    assert_matches_supernet(plain, supernet, x, hybridize)


def test_gradient_crosses_skipped_improvement_blocks_of_a_hybridized_supernet():
    # Regression: a hybridized block returning its input unchanged cut the autograd graph, so
    # nothing before a skipped improvement block learned during the search.
    supernet = meliusnet22(enas=True, **TINY)
    supernet.initialize()
    x = random_data((2, 1, 8, 8))
    for unit in find_units(supernet):
        unit.select({SKIP: True})
    hybridize_supernet(supernet)
    with mx.autograd.record():
        loss = supernet(x).sum()
    loss.backward()
    stem_grad = supernet.stem[0].weight.grad().asnumpy()
    assert np.abs(stem_grad).sum() > 0


def test_custom_network_exports_and_reloads(tmp_path):
    net = bmxnet_models.get_model("meliusnet_custom:DISTSIDI", binary_padding="minus_one",
                                  weight_scaling="mean", **TINY)
    assert_export_round_trip(net, random_data((2, 1, 9, 9)), str(tmp_path / "custom"), epoch=1)


def test_registry_lists_and_builds_every_size():
    names = bmxnet_models.available_models()
    for size in (22, 29, 42, 59):
        assert f"meliusnet{size}" in names
        assert f"meliusnet{size}_custom:<DIST string with 3 T>" in names
    options = set(bmxnet_models.model_options("meliusnet_custom:DI"))
    assert {"stem", "base_channels", "grad_cancel", "weight_scaling", "activation",
            "binary_padding", "in_channels", "classes"} <= options
    with pytest.raises(ConfigError, match="no option"):
        bmxnet_models.get_model("meliusnet22", growth=32)
    net = bmxnet_models.get_model("meliusnet42", **TINY)
    net.initialize(mx.init.Xavier())
    assert net(random_data((1, 1, 8, 8))).shape == (1, 5)
