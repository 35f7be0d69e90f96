"""ResNet-E: structure, shapes, ENAS supernet (shared weights), fixed architecture, export."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

import bmxnet_models
from bmxnet_models.binary import QConv2D
from bmxnet_models.resnet_e import (BasicBlockE, ShortcutAvgPool, blocks_per_stage, resnet_e18,
                                    resnet_e34)
from lightnas_cli.errors import ConfigError
from bmxnet_models.enas.unit import (EnasUnit, find_units, fixed_choices,
                                           hybridize_supernet)

from helpers import assert_export_round_trip, assert_matches_supernet, random_data, randomize

TINY = dict(classes=5, base_channels=8)


def test_block_counts_follow_bmxnet_spec():
    assert blocks_per_stage(18) == (4, 4, 4, 4)
    assert blocks_per_stage(34) == (6, 8, 12, 6)
    assert len(resnet_e18(**TINY).blocks) == 16
    assert len(resnet_e34(**TINY).blocks) == 32
    with pytest.raises(ConfigError):
        blocks_per_stage(50)


def test_structure_full_precision_ends_and_downsample_shortcuts():
    net = resnet_e18(weight_scaling="mean", bits=1, **TINY)
    assert type(net.features[0]) is nn.Conv2D and type(net.output) is nn.Dense
    widths = []
    for index, block in enumerate(net.blocks):
        assert isinstance(block, BasicBlockE) and block.bits == 1
        assert isinstance(block.conv, QConv2D) and block.conv.is_binary
        assert block.conv.kernel_size == (3, 3) and block.conv.weight_scaling == "mean"
        first_of_stage = index % 4 == 0
        if first_of_stage and index > 0:
            assert block.stride == 2 and block.conv.strides == (2, 2)
            kinds = [type(child) for child in block.downsample._children.values()]
            assert kinds == [ShortcutAvgPool, nn.Conv2D, nn.BatchNorm]
        else:
            assert block.downsample is None
        widths.append(block.channels)
    assert widths[::4] == [8, 16, 32, 64]
    binary = [name for name in net.collect_params().keys() if "qconv2d" in name]
    assert len(binary) == 16


@pytest.mark.parametrize("stem", ["thumbnail", "imagenet"])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 1, 8, 8), (2, 1, 7, 9)])
def test_output_shape_with_both_stems(stem, shape):
    net = resnet_e18(stem=stem, **TINY)
    net.initialize()
    net.hybridize()
    assert net(random_data(shape)).shape == (shape[0], 5)
    assert net.features[0].weight.shape[1] == shape[1]  # first conv follows the data


def test_training_step_reaches_binary_weights():
    net = resnet_e18(**TINY)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    x, y = random_data((4, 1, 8, 8)), nd.array([0, 1, 2, 3])
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    trainer.step(4)
    grad = net.blocks[5].conv.weight.grad().asnumpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_enas_supernet_has_one_unit_per_block_and_shares_weights():
    plain = resnet_e18(**TINY)
    supernet = resnet_e18(enas=True, **TINY)
    units = find_units(supernet)
    assert len(units) == plain.num_blocks == 16
    assert all(isinstance(block, EnasUnit) for block in supernet.blocks)
    for unit in units:
        assert unit.choices == {"bits": [1, 32]}
        binary, full = unit.candidates
        assert (binary.bits, full.bits) == (1, 32)
        assert binary.conv.weight is full.conv.weight and binary.bn.gamma is full.bn.gamma
    x = random_data((2, 1, 8, 8))
    for net in (plain, supernet):
        net.initialize()
        net(x)
    sizes = [sorted(p.data().size for p in net.collect_params().values())
             for net in (plain, supernet)]
    assert len(supernet.collect_params().keys()) == len(plain.collect_params().keys())
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("hybridize", [False, True])
def test_fixed_choices_network_matches_supernet_selection(hybridize):
    options = dict(stem="imagenet", weight_scaling="mean", grad_cancel=1.3, **TINY)
    supernet = resnet_e18(enas=True, **options)
    supernet.initialize()
    x = random_data((2, 3, 16, 16))
    supernet(x)
    randomize(supernet)
    choices = [{"bits": bits} for bits in [1, 32, 32, 1] * 4]
    for unit, values in zip(find_units(supernet), choices):
        unit.select(values)
    if hybridize:
        hybridize_supernet(supernet)

    with fixed_choices(choices):
        plain = resnet_e18(enas=True, **options)
    assert not find_units(plain)
    assert [block.bits for block in plain.blocks] == [c["bits"] for c in choices]
    assert_matches_supernet(plain, supernet, x, hybridize)


def test_export_and_reload_matches(tmp_path):
    with fixed_choices([{"bits": bits} for bits in [1, 1, 32, 1] * 4]):
        net = resnet_e18(enas=True, weight_scaling="mean", **TINY)
    assert_export_round_trip(net, random_data((2, 1, 9, 9)), str(tmp_path / "resnet_e18"),
                             epoch=3)


def test_registry_and_config_errors():
    assert {"resnet_e18", "resnet_e34"} <= set(bmxnet_models.available_models())
    net = bmxnet_models.get_model("resnet_e18", classes=3, base_channels=4, bits=32)
    assert all(block.bits == 32 for block in net.blocks)
    with pytest.raises(ConfigError, match="Did you mean 'resnet_e18'"):
        bmxnet_models.get_model("resnet_e81")
    with pytest.raises(ConfigError, match="no option"):
        bmxnet_models.get_model("resnet_e18", base_channel=8)
    with pytest.raises(ConfigError, match="stem"):
        resnet_e18(stem="cifar")
    with pytest.raises(ConfigError, match="bits"):
        resnet_e18(bits=2)


def test_binary_options_reach_every_block_and_change_outputs():
    net = bmxnet_models.get_model("resnet_e18", activation="approx_sign",
                                  binary_padding="minus_one", **TINY)
    assert all((b.conv.activation, b.conv.binary_padding) == ("approx_sign", "minus_one")
               for b in net.blocks)
    zero = bmxnet_models.get_model("resnet_e18", **TINY)
    x = random_data((2, 1, 8, 8))
    for model in (net, zero):
        model.initialize()
        model(x)
    for src, dst in zip(zero.collect_params().values(), net.collect_params().values()):
        dst.set_data(src.data())
    # -1 instead of 0 at the borders changes the binary convolutions' outputs
    assert not np.allclose(net(x).asnumpy(), zero(x).asnumpy())
    with pytest.raises(ConfigError, match="binary_padding"):
        resnet_e18(binary_padding="one")
    with pytest.raises(ConfigError, match="activation"):
        resnet_e18(activation="sign")
