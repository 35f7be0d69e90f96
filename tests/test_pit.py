"""PIT layers, maskers, conversion, regularizers and export (seed 001's test list, plus Conv2D,
Dense and export equivalence). Tiny models, a few steps each."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from lightnas_cli import costs
from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.binarizer import binarize
from lightnas_cli.search.pit.conv1d import PITConv1D
from lightnas_cli.search.pit.conv2d import PITConv2D
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_calculator import (ConcatFeaturesCalculator,
                                                         ConstFeaturesCalculator,
                                                         FlattenFeaturesCalculator,
                                                         MaskerFeaturesCalculator)
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.pit.module import PITLayer


class ResBlockNet(gluon.HybridBlock):
    """One residual block on 1-D data: c0 -> BN -> ReLU -> (c1 -> ReLU -> c2) + skip -> fc."""

    def __init__(self, in_channels: int = 2, channels: int = 8, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.c0 = nn.Conv1D(channels, 3, padding=1, in_channels=in_channels)
            self.b0 = nn.BatchNorm(in_channels=channels)
            self.c1 = nn.Conv1D(channels, 5, padding=2, in_channels=channels)
            self.c2 = nn.Conv1D(channels, 3, padding=1, in_channels=channels)
            self.pool = nn.GlobalAvgPool1D()
            self.fc = nn.Dense(4, in_units=channels)

    def hybrid_forward(self, F, x):
        x = F.relu(self.b0(self.c0(x)))
        y = self.c2(F.relu(self.c1(x)))
        return self.fc(self.pool(F.relu(x + y)))


class ConcatNet(gluon.HybridBlock):
    """Two branches concatenated along channels, flattened into a dense layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv1D(4, 3, padding=1, in_channels=1)
            self.b = nn.Conv1D(6, 5, padding=2, in_channels=1)
            self.bn = nn.BatchNorm(in_channels=10)
            self.fc = nn.Dense(3, in_units=10 * 8)

    def hybrid_forward(self, F, x):
        return self.fc(F.relu(self.bn(F.concat(self.a(x), self.b(x), dim=1))))


class PreconvertedNet(gluon.HybridBlock):
    """A network that already holds PIT layers (with masks chosen by its author)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            conv0 = nn.Conv1D(6, 3, padding=1, in_channels=2)
            conv1 = nn.Conv1D(5, 3, padding=1, in_channels=6)
            for conv in (conv0, conv1):
                conv.initialize()
            self.masker0 = PITFeaturesMasker(6, prefix="user_m0_")
            self.c0 = PITConv1D(conv0, out_features_masker=self.masker0)
            self.c1 = PITConv1D(conv1)
            self.pool = nn.GlobalAvgPool1D()
            self.fc = nn.Dense(3, in_units=5)

    def hybrid_forward(self, F, x):
        return self.fc(self.pool(F.relu(self.c1(F.relu(self.c0(x))))))


def make(cls, prefix: str, *args, **kwargs) -> gluon.HybridBlock:
    mx.random.seed(7)
    net = cls(*args, prefix=prefix, **kwargs)
    net.initialize(mx.init.Xavier())
    return net


def layer(pit: PITModel, path: str):
    return dict(pit.pit_layers)[path]


def random_masks(pit: PITModel, seed: int) -> None:
    rng = np.random.RandomState(seed)
    for param in pit.nas_parameters():
        param.set_data(nd.array(rng.uniform(-0.3, 1.3, param.shape)))


def set_bn_stats(net: gluon.Block, seed: int) -> None:
    """Non-trivial running statistics, so inference-mode export checks mean something."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            param.set_data(nd.array(rng.uniform(-0.5, 0.5, param.shape)))
        elif name.endswith(("running_var", "gamma")):
            param.set_data(nd.array(rng.uniform(0.5, 1.5, param.shape)))


# --- binarizer ----------------------------------------------------------------------------

def test_binarizer_is_exact_with_straight_through_gradient():
    theta = nd.array([0.2, 0.5, 0.51, 1.7, 9.3, -0.4])
    theta.attach_grad()
    with autograd.record():
        mask = binarize(nd, theta, 0.5)
        (mask * nd.arange(6)).sum().backward()
    assert mask.asnumpy().tolist() == [0, 0, 1, 1, 1, 0]
    assert theta.grad.asnumpy().tolist() == [0, 1, 2, 3, 4, 5]


# --- conversion ---------------------------------------------------------------------------

def test_conversion_features_calculators_and_shared_maskers():
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    c0, c1, c2, fc = (layer(pit, p) for p in ("c0", "c1", "c2", "fc"))
    assert all(isinstance(l, PITConv1D) for l in (c0, c1, c2)) and isinstance(fc, PITDense)
    # c0 reads the network input: a constant; c1 reads c0's α; c2 reads c1's α.
    assert isinstance(c0.input_features_calculator, ConstFeaturesCalculator)
    assert c0.input_features_calculator.features(soft=False) == 2
    assert isinstance(c1.input_features_calculator, MaskerFeaturesCalculator)
    assert c1.input_features_calculator.masker is c0.out_features_masker
    assert c2.input_features_calculator.masker is c1.out_features_masker
    # The residual add shares one masker between c0 and c2; c1 has its own.
    assert c0.out_features_masker is c2.out_features_masker
    assert c1.out_features_masker is not c0.out_features_masker
    assert len(pit.maskers) == 2
    # After the add, pooling and the dense layer's implicit flatten: a flatten of that masker.
    assert isinstance(fc.input_features_calculator, FlattenFeaturesCalculator)
    assert fc.input_features_calculator.previous.masker is c0.out_features_masker
    # The classifier's outputs are never pruned.
    assert fc.out_features_masker is None and fc.output_features_calculator.size == 4
    # The batch norm after c0 was converted and applies c0's mask (PLiNIO: α ⊙ BN(conv)).
    (path, bn), = pit.batchnorms
    assert path == "b0" and isinstance(bn, PITBatchNorm)
    assert bn.output_features_calculator.masker is c0.out_features_masker
    assert c0.mask_output is False and c1.mask_output and c2.mask_output


def test_conversion_keeps_the_function_and_hybridizes():
    net = make(ResBlockNet, "res_")
    x = nd.random.normal(shape=(3, 2, 16))
    before = net(x).asnumpy()
    pit = PITModel(net, (2, 16))
    assert np.abs(pit(x).asnumpy() - before).max() == 0
    pit.hybridize()
    assert np.abs(pit(x).asnumpy() - before).max() < 1e-6


def test_conversion_of_concat_uses_concat_calculator():
    pit = PITModel(make(ConcatNet, "cat_"), (1, 8))
    fc = layer(pit, "fc")
    calc = fc.input_features_calculator
    assert isinstance(calc, FlattenFeaturesCalculator) and calc.multiplier == 8
    assert isinstance(calc.previous, ConcatFeaturesCalculator)
    assert [p.masker for p in calc.previous.inputs] == [layer(pit, "a").out_features_masker,
                                                        layer(pit, "b").out_features_masker]
    assert calc.features(soft=False) == 80
    layer(pit, "a").out_features_masker.alpha.set_data(nd.array([0, 1, 0, 1]))
    assert calc.features(soft=False) == 64


@pytest.mark.parametrize("autoconvert", [False, True])
def test_conversion_of_a_model_with_pit_layers(autoconvert):
    net = make(PreconvertedNet, "pre_")
    user_masker = net.masker0
    pit = PITModel(net, (2, 10), autoconvert_layers=autoconvert)
    paths = [path for path, _ in pit.pit_layers]
    c0, c1 = layer(pit, "c0"), layer(pit, "c1")
    # The author's masker is kept and wired as c1's input features.
    assert c0.out_features_masker is user_masker
    assert c1.input_features_calculator.masker is user_masker
    if autoconvert:
        assert paths == ["c0", "c1", "fc"] and isinstance(layer(pit, "fc"), PITDense)
        # The dense layer is the output: its units are frozen.
        assert layer(pit, "fc").out_features_masker is None
    else:
        assert paths == ["c0", "c1"] and type(net.fc) is nn.Dense
        fixed = [e for e in pit.layers if e.path == "fc"][0]
        assert fixed.role == "fixed"
        assert fixed.input_calculator.previous.masker is c1.out_features_masker


def test_exclude_names_and_types():
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16), exclude_names=["c1"])
    assert type(pit.seed.c1) is nn.Conv1D
    assert [p for p, _ in pit.pit_layers] == ["c0", "c2", "fc"]
    # c2 reads the excluded layer's fixed output channels.
    assert isinstance(layer(pit, "c2").input_features_calculator, ConstFeaturesCalculator)
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16), exclude_types=(nn.Dense,))
    assert type(pit.seed.fc) is nn.Dense and "fc" not in dict(pit.pit_layers)
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16), exclude_names=["res_conv1"])
    assert type(pit.seed.c1) is nn.Conv1D
    with pytest.raises(ValueError, match="match no layer"):
        PITModel(make(ResBlockNet, "res_"), (2, 16), exclude_names=["nope"])


# --- masking by hand ----------------------------------------------------------------------

def conv1d_layer(out=4, k=5, in_channels=2, padding=2, bias=True) -> PITConv1D:
    mx.random.seed(3)
    conv = nn.Conv1D(out, k, padding=padding, in_channels=in_channels, use_bias=bias)
    conv.initialize(mx.init.Xavier())
    conv.bias.set_data(nd.arange(1, out + 1) * 0.1) if bias else None
    return PITConv1D(conv)


def reference_conv(layer: PITConv1D | PITConv2D, x, weight_mask, channel_mask) -> np.ndarray:
    weight = layer.weight.data() * nd.array(weight_mask)
    weight = weight * nd.array(channel_mask).reshape((-1,) + (1,) * (weight.ndim - 1))
    bias = layer.bias.data() * nd.array(channel_mask)
    return nd.Convolution(x, weight, bias, **layer._kwargs).asnumpy()


def test_masking_by_hand_conv1d_alpha_beta_gamma():
    pit_conv = conv1d_layer()
    x = nd.random.normal(shape=(2, 2, 12))
    # alpha: channel 1 off (channel 3, the keep-alive one, stays whatever its alpha).
    pit_conv.out_features_masker.alpha.set_data(nd.array([1, 0.2, 0.9, 0.0]))
    # beta: taps are kept contiguously from the newest; cumulative sums 0,0,.6,.6+x,...
    pit_conv.timestep_maskers[0].beta.set_data(nd.array([0, 0, 0.6, 0, 0]))
    out = pit_conv(x).asnumpy()
    expected = reference_conv(pit_conv, x, np.array([0, 0, 1, 1, 1]), np.array([1, 0, 1, 1]))
    assert np.abs(out - expected).max() < 1e-6
    assert np.all(out[:, 1] == 0)
    assert pit_conv.kernel_size_opt == (3,) and pit_conv.dilation_opt == (1,)
    # gamma: with gamma_0 = 0 only every other tap (counted from the newest) survives.
    pit_conv.timestep_maskers[0].beta.set_data(nd.ones(5))
    pit_conv.dilation_maskers[0].gamma.set_data(nd.array([0, 1, 1]))
    out = pit_conv(x).asnumpy()
    expected = reference_conv(pit_conv, x, np.array([1, 0, 1, 0, 1]), np.array([1, 0, 1, 1]))
    assert np.abs(out - expected).max() < 1e-6
    assert pit_conv.kernel_size_opt == (3,) and pit_conv.dilation_opt == (2,)
    # gamma_1 = 0 too: the coarsest grid (fixed) keeps taps 0 and 4.
    pit_conv.dilation_maskers[0].gamma.set_data(nd.array([0, 0, 1]))
    assert pit_conv.time_mask(0).tolist() == [True, False, False, False, True]
    assert pit_conv.dilation_opt == (4,)


def test_masking_by_hand_conv2d_per_axis():
    mx.random.seed(4)
    conv = nn.Conv2D(3, (3, 5), padding=(1, 2), in_channels=2)
    conv.initialize(mx.init.Xavier())
    pit_conv = PITConv2D(conv)
    x = nd.random.normal(shape=(2, 2, 6, 9))
    pit_conv.timestep_maskers[0].beta.set_data(nd.array([0, 0.7, 1]))       # rows: 2 taps
    pit_conv.dilation_maskers[1].gamma.set_data(nd.array([0.1, 1, 1]))      # cols: step 2
    pit_conv.out_features_masker.alpha.set_data(nd.array([0, 1, 1]))
    rows, cols = np.array([0, 1, 1]), np.array([1, 0, 1, 0, 1])
    expected = reference_conv(pit_conv, x, np.outer(rows, cols)[None, None], np.array([0, 1, 1]))
    assert np.abs(pit_conv(x).asnumpy() - expected).max() < 1e-6
    assert pit_conv.kernel_size_opt == (2, 3) and pit_conv.dilation_opt == (1, 2)


def test_masking_by_hand_dense():
    mx.random.seed(5)
    dense = nn.Dense(4, in_units=6)
    dense.initialize(mx.init.Xavier())
    pit_dense = PITDense(dense)
    x = nd.random.normal(shape=(3, 6))
    pit_dense.out_features_masker.alpha.set_data(nd.array([0.9, 0.3, 0, 2]))
    out = pit_dense(x).asnumpy()
    full = dense(x).asnumpy()
    assert np.all(out[:, 1:3] == 0)
    assert np.abs(out[:, [0, 3]] - full[:, [0, 3]]).max() < 1e-6
    assert pit_dense.out_features_opt == 2


# --- regularizer: initial values ------------------------------------------------------------

def test_regularizer_initial_value_single_layers():
    # ARCHITECTURE.md's example: Conv1d 3->32, k=3, length 100: 320 parameters, 32,000 MACs.
    conv = nn.Conv1D(32, 3, padding=1, in_channels=3)
    conv.initialize()
    net = nn.HybridSequential(prefix="one_")
    net.add(conv)
    pit = PITModel(net, (3, 100))
    pit_layer = layer(pit, "0")
    assert isinstance(pit_layer, PITConv1D)
    assert float(pit.size().asscalar()) == 320 and float(pit.macs().asscalar()) == 32000
    assert float(pit.flops().asscalar()) == 64000
    # The output layer's channels are frozen, so the soft count equals the hand count.
    assert float(pit.regularizer("size").asscalar()) == 320
    # Conv2D 2->5, 3x3 on 8x8 (padding 1) and Dense 7->4.
    c2 = nn.Conv2D(5, 3, padding=1, in_channels=2)
    dense = nn.Dense(4, in_units=5 * 8 * 8)
    net2 = nn.HybridSequential(prefix="two_")
    net2.add(c2, dense)
    net2.initialize()
    pit2 = PITModel(net2, (2, 8, 8))
    conv_params, dense_params = 2 * 5 * 9 + 5, 320 * 4 + 4
    assert float(pit2.size().asscalar()) == conv_params + dense_params
    assert float(pit2.macs().asscalar()) == conv_params * 64 + dense_params
    assert float(pit2.regularizer("macs").asscalar()) == conv_params * 64 + dense_params


def test_regularizer_initial_value_full_model():
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    c0, c1, c2, fc = 8 * 2 * 3 + 8, 8 * 8 * 5 + 8, 8 * 8 * 3 + 8, 8 * 4 + 4
    size = c0 + c1 + c2 + fc
    macs = (c0 + c1 + c2) * 16 + fc
    for name, expected in (("size", size), ("macs", macs), ("flops", 2 * macs)):
        assert float(pit.regularizer(name).asscalar()) == expected
        assert float(pit.costs(soft=True)[name].asscalar()) == expected
        assert pit.costs(soft=False)[name] == expected
    # The same counting as lightnas_cli.costs.profile on the plain network.
    assert costs.summarize(costs.profile(make(ResBlockNet, "res_"), (2, 16))).params == size


# --- regularizer: gradients ----------------------------------------------------------------

def non_fixed_elements(pit: PITModel):
    """(parameter, indices of its elements that are not fixed) for every mask."""
    out = []
    for masker in pit.all_maskers():
        param = masker.nas_parameter
        out.append((param, list(range(param.shape[0] - 1))))
    return out


@pytest.mark.parametrize("reg", ["size", "macs", "flops"])
def test_regularizer_only_step_gives_nonzero_mask_gradients(reg):
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    with autograd.record():
        value = pit.regularizer(reg)
    value.backward()
    for param, free in non_fixed_elements(pit):
        grad = param.grad().asnumpy()
        assert np.all(grad[free] != 0), param.name
        assert grad[-1] == 0, f"{param.name}: the fixed element must get no gradient"


def test_regularizer_only_training_drives_masks_to_zero():
    """The regularizer as the only loss, computed where the search computes it: in one graph
    with the network, run forward on fresh random inputs every step."""
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    pit.hybridize()
    graph = pit.search_graph("size")
    trainer = gluon.Trainer(pit.nas_parameters(), "adam", {"learning_rate": 0.05})
    rng = np.random.RandomState(0)
    for _ in range(60):
        x = nd.array(rng.standard_normal((4, 2, 16)))
        with autograd.record():
            out, value = graph(x)
            loss = value / 1000.0
        loss.backward()
        assert out.shape == (4, 4)
        trainer.step(1)
    for path, pit_layer in pit.pit_layers:
        if pit_layer.out_features_masker is not None:
            assert pit_layer.out_features_opt == 1, path   # only the keep-alive channel
        if isinstance(pit_layer, PITConv1D):
            assert pit_layer.kernel_size_opt == (1,), path  # only the newest tap
    for param, free in non_fixed_elements(pit):
        assert np.all(np.abs(param.data().asnumpy()[free]) < 0.5), param.name


# --- train_* flags -------------------------------------------------------------------------

def task_and_reg_step(pit: PITModel) -> None:
    x = nd.random.normal(shape=(4, 2, 16))
    y = nd.array([0, 1, 2, 3])
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(pit(x), y).sum() + pit.regularizer("macs") / 100
    loss.backward()


@pytest.mark.parametrize("flag", ["train_channels", "train_rf", "train_dilation"])
def test_train_flags_keep_gradients_at_zero(flag):
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16), **{flag: False})
    task_and_reg_step(pit)
    groups = {"train_channels": [m.alpha for m in pit.maskers],
              "train_rf": [l.timestep_maskers[0].beta for _, l in pit.pit_layers
                           if isinstance(l, PITConv1D)],
              "train_dilation": [l.dilation_maskers[0].gamma for _, l in pit.pit_layers
                                 if isinstance(l, PITConv1D)]}
    for name, params in groups.items():
        grads = [np.abs(p.grad().asnumpy()).sum() for p in params]
        if name == flag:
            assert all(g == 0 for g in grads), name
        else:
            assert all(g > 0 for g in grads), name


# --- combined loss -------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["bce", "cce"])
@pytest.mark.parametrize("reg", ["size", "macs", "flops"])
def test_combined_loss_step_changes_weights_and_masks(task, reg):
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    x = nd.array(np.random.RandomState(0).standard_normal((4, 2, 16)))
    labels = nd.array([0, 1, 2, 3])
    weights_before = [p.data().copy() for p in pit.net_parameters()]
    masks_before = [m.nas_parameter.data().copy() for m in pit.all_maskers()]
    weight_trainer = gluon.Trainer(pit.net_parameters(), "adam", {"learning_rate": 0.01})
    mask_trainer = gluon.Trainer(pit.nas_parameters(), "adam", {"learning_rate": 0.01})
    with autograd.record():
        out = pit(x)
        if task == "bce":
            loss = gluon.loss.SigmoidBinaryCrossEntropyLoss()(out, nd.one_hot(labels, 4))
        else:
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(out, labels)
        total = loss.sum() + 4 * 0.1 * pit.regularizer(reg) / float(pit.costs(False)[reg])
    total.backward()
    weight_trainer.step(4)
    mask_trainer.step(4)
    changed = [float(nd.abs(p.data() - b).max().asscalar()) > 0
               for p, b in zip(pit.net_parameters(), weights_before)]
    assert all(changed)
    # Every masker (α, β, γ) moved: each has its own slice of the one mask parameter.
    changed_masks = [float(nd.abs(m.nas_parameter.data() - b).max().asscalar()) > 0
                     for m, b in zip(pit.all_maskers(), masks_before)]
    assert len(changed_masks) == 8 and all(changed_masks)


# --- export --------------------------------------------------------------------------------

def prune_taps(pit: PITModel, rf_path: str, dilation_path: str, axis: int = 0) -> None:
    """Cut the receptive field of one layer (only the newest tap and its neighbour kept) and
    raise the dilation of another (γ_0 = 0: every other tap), whatever random masks say."""
    rf = layer(pit, rf_path).timestep_maskers[axis]
    k = rf.size
    rf.beta.set_data(nd.array([0.0] * (k - 2) + [0.9, 1.0]))
    dil = layer(pit, dilation_path).dilation_maskers[axis]
    dil.gamma.set_data(nd.array([0.1] + [1.0] * (dil.size - 1)))
    layer(pit, dilation_path).timestep_maskers[axis].beta.set_data(
        nd.ones(layer(pit, dilation_path).kernel_size[axis]))


def assert_taps_pruned(pit: PITModel) -> None:
    """At least one layer lost receptive field and one gained dilation (not left to chance)."""
    convs = [l for _, l in pit.pit_layers if isinstance(l, (PITConv1D, PITConv2D))]
    assert any(k < full for l in convs for k, full in zip(l.kernel_size_opt, l.kernel_size)
               if k > 1 or full > 1), "no layer has a pruned receptive field"
    assert any(d > base for l in convs for d, base in zip(l.dilation_opt, l.dilation)), \
        "no layer has a pruned dilation"


def check_export(pit: PITModel, shape, seed: int = 0) -> gluon.HybridBlock:
    x = nd.array(np.random.RandomState(seed).standard_normal((3, *shape)))
    assert_taps_pruned(pit)
    exported = pit.export()
    for block in (pit, exported):
        block.hybridize()
    diff = float(nd.abs(pit(x) - exported(x)).max().asscalar())
    assert diff <= 1e-5
    assert not any(isinstance(b, (PITConv1D, PITConv2D, PITDense, PITBatchNorm))
                   for b in _blocks(exported))
    found = costs.summarize(costs.profile(pit.export(), shape))
    assert found.params == pit.costs(soft=False)["size"]
    assert found.macs == pit.costs(soft=False)["macs"]
    return exported


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


@pytest.mark.parametrize("seed", [0, 1])
def test_export_equivalence_residual_conv1d(seed):
    net = make(ResBlockNet, "res_")
    set_bn_stats(net, seed)
    pit = PITModel(net, (2, 16))
    random_masks(pit, seed)
    prune_taps(pit, "c1", "c0")
    exported = check_export(pit, (2, 16), seed)
    assert exported.c0._channels < 8 or exported.c1._kernel_size != (5,)


def test_export_equivalence_concat():
    net = make(ConcatNet, "cat_")
    set_bn_stats(net, 2)
    pit = PITModel(net, (1, 8))
    random_masks(pit, 2)
    prune_taps(pit, "b", "b")
    layer(pit, "b").timestep_maskers[0].beta.set_data(nd.array([0, 0, 0.6, 0, 1]))
    check_export(pit, (1, 8), 2)


def test_export_equivalence_conv2d_dense_and_depthwise():
    import bmxnet_models
    mx.random.seed(1)
    net = bmxnet_models.get_model("dscnn", filters=8, prefix="ds_")
    net.initialize(mx.init.Xavier())
    set_bn_stats(net, 3)
    pit = PITModel(net, (1, 49, 10))
    random_masks(pit, 3)
    prune_taps(pit, "4", "10")
    exported = check_export(pit, (1, 49, 10), 3)
    depthwise = [b for b in _blocks(exported) if isinstance(b, nn.Conv2D)
                 and b._kwargs["num_group"] > 1]
    assert depthwise and all(b._kwargs["num_group"] == b._channels for b in depthwise)


@pytest.mark.parametrize("name, shape, options, rf, dilation", [
    ("resnet8", (3, 12, 12), {"widths": (4, 6, 8)}, "0", "3.conv2"),
    ("mobilenet_v1", (3, 24, 24), {"width_multiplier": 0.25}, "3", "15"),
])
def test_export_equivalence_mlperf_tiny_models(name, shape, options, rf, dilation):
    """ResNet-8 (residual adds, 1x1 shortcuts) and MobileNetV1 (depthwise stacks, stride 2)
    with random masks: the exported plain network computes the masked one."""
    import bmxnet_models
    mx.random.seed(4)
    net = bmxnet_models.get_model(name, prefix=f"{name}_", **options)
    net.initialize(mx.init.Xavier())
    set_bn_stats(net, 4)
    pit = PITModel(net, shape)
    random_masks(pit, 4)
    prune_taps(pit, rf, dilation, axis=1)
    exported = check_export(pit, shape, 4)
    assert not any(isinstance(b, PITLayer) for b in _blocks(exported))
    unpruned = bmxnet_models.get_model(name, **options)
    unpruned.initialize()
    assert pit.costs(soft=False)["params"] < costs.summarize(costs.profile(unpruned, shape)).params
