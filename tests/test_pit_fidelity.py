"""PIT against PLiNIO's semantics (issue 10) and the mask bank against the layer-by-layer
reference: grouped convolutions, shared weights, per-layer flags across phases, cost_layers,
discrete_cost, and the fused/stacked regularizer's values and gradients. Tiny models."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from lightnas_cli.search.pit.config import regularizer_cost_model
from lightnas_cli.search.pit.conv1d import PITConv1D
from lightnas_cli.search.pit.features_calculator import ConstFeaturesCalculator
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.pit.regularizers import model_costs
from lightnas_cli.search.pit.step import SearchStep
from lightnas_cli.search.training import (ClassificationTask, EpochTrainer,
                                          LearningRateSchedule, make_trainer)

from test_pit import (ConcatNet, ResBlockNet, _blocks, check_export, layer, make, prune_taps,
                      random_masks, set_bn_stats)


class GroupedNet(gluon.HybridBlock):
    """A PIT-able convolution followed by a grouped (2 groups, not depthwise) convolution."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.c0 = nn.Conv1D(8, 3, padding=1, in_channels=2)
            self.g = nn.Conv1D(6, 3, padding=1, groups=2, in_channels=8)
            self.c1 = nn.Conv1D(6, 5, padding=2, in_channels=6)
            self.pool = nn.GlobalAvgPool1D()
            self.fc = nn.Dense(3, in_units=6)

    def hybrid_forward(self, F, x):
        y = F.relu(self.g(F.relu(self.c0(x))))
        return self.fc(self.pool(F.relu(self.c1(y))))


class SharedNet(gluon.HybridBlock):
    """A convolution and a dense layer each called twice (shared weights)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.c0 = nn.Conv1D(4, 3, padding=1, in_channels=1)
            self.s = nn.Conv1D(4, 3, padding=1, in_channels=4)
            self.pool = nn.GlobalAvgPool1D()
            self.fc = nn.Dense(2, in_units=4)

    def hybrid_forward(self, F, x):
        a = F.relu(self.c0(x))
        b = F.relu(self.s(a))
        c = F.relu(self.s(b))
        return self.fc(self.pool(b)) + self.fc(self.pool(c))


# --- 1. grouped convolutions ----------------------------------------------------------------

def test_grouped_convolution_after_a_pit_layer_freezes_its_inputs_and_exports():
    net = make(GroupedNet, "grp_")
    pit = PITModel(net, (2, 16))
    entry = {e.path: e for e in pit.layers}["g"]
    assert entry.role == "fixed" and type(net.g) is nn.Conv1D
    # The producer's channels cannot shrink any more: no α for c0, a constant input for g.
    assert layer(pit, "c0").out_features_masker is None
    assert isinstance(entry.input_calculator, ConstFeaturesCalculator)
    # c0 still searches its receptive field; c1 (after the grouped conv) its channels.
    assert layer(pit, "c0").time_searchable(0) and layer(pit, "c1").out_features_masker
    random_masks(pit, 5)
    prune_taps(pit, "c1", "c0")
    check_export(pit, (2, 16), 5)  # export used to fail: "a grouped convolution's inputs..."
    # The discrete cost counts the grouped conv exactly: 8/2 inputs per group, 3 taps.
    per_layer = {path: p for path, p, _ in pit.costs(soft=False)["layers"]}
    assert per_layer["g"] == 6 * 4 * 3 + 6


# --- 2. shared weights ------------------------------------------------------------------------

def test_shared_weights_count_once_for_size_and_every_call_for_macs():
    pit = PITModel(make(SharedNet, "shr_"), (1, 16))
    c0, s, fc = 4 * 1 * 3 + 4, 4 * 4 * 3 + 4, 4 * 2 + 2
    length = 16
    size, macs = c0 + s + fc, c0 * length + 2 * s * length + 2 * fc
    assert (size, macs) == (78, 1940)  # per call, size would be 130
    found = pit.costs(soft=False)
    assert found["size"] == size and found["macs"] == macs and found["flops"] == 2 * macs
    for name, expected in (("size", size), ("macs", macs)):
        assert float(pit.regularizer(name).asscalar()) == expected
        assert float(pit.costs(soft=True)[name].asscalar()) == expected
    # One layer entry per shared block, listing its calls.
    entries = {e.path: e for e in pit.layers}
    assert len(entries["s"].calls) == 2 and len(entries["fc"].calls) == 2
    assert [e.path for e in pit.layers].count("s") == 1
    # The exported network holds one copy of the shared weights and computes the same.
    random_masks(pit, 1)
    x = nd.array(np.random.RandomState(1).standard_normal((3, 1, 16)))
    exported = pit.export()
    assert float(nd.abs(pit(x) - exported(x)).max().asscalar()) <= 1e-5
    weights = {id(b.weight): b for b in _blocks(exported) if getattr(b, "weight", None)}
    distinct = sum(int(np.prod(b.weight.shape)) + int(np.prod(b.bias.shape))
                   for b in weights.values())
    assert distinct == pit.costs(soft=False)["size"]


# --- 3. λ = 0 still trains the masks ----------------------------------------------------------

class Batches:
    def __init__(self, x, y, steps):
        self.batch, self.steps = (x, y), steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


class Quiet:
    def update(self, **_):
        pass


def run_epoch(pit: PITModel, weight: float, search: bool, steps: int = 3) -> dict:
    """One epoch of the shared loop with the search method's hooks."""
    rng = np.random.RandomState(0)
    x = nd.array(rng.standard_normal((8, 2, 16)))
    y = nd.array(rng.randint(0, 4, 8))
    ctx = [mx.cpu()]
    loop = EpochTrainer(make_trainer(pit.net_parameters(), "adam", 0.01, ctx), ctx,
                        ClassificationTask(), lambda n: LearningRateSchedule(0.01))
    masks = make_trainer(pit.nas_parameters(), "adam", 0.05, ctx)
    pit.freeze_masks(not search)
    step = SearchStep(pit, masks if search else None, "size", weight)
    return loop.train_epoch(step.net, Batches(x, y, steps), Quiet(), **step.hooks())


@pytest.mark.parametrize("weight", [0.0, 1e-3])
def test_masks_train_in_the_search_phase_whatever_the_strength(weight):
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    bank = pit.nas_parameters()[0]
    before = bank.data().copy()
    run_epoch(pit, weight, search=False)  # warm-up: masks frozen
    assert np.array_equal(bank.data().asnumpy(), before.asnumpy())
    run_epoch(pit, weight, search=True)
    assert not np.array_equal(bank.data().asnumpy(), before.asnumpy())
    assert SearchStep(pit, gluon.Trainer(pit.nas_parameters(), "sgd"), "size", 0.0).also_step


# --- 4. per-layer flags survive the phases ------------------------------------------------------

def test_per_layer_flags_survive_warmup_and_finetune():
    pit = PITModel(make(ResBlockNet, "res_"), (2, 16))
    c1 = layer(pit, "c1")
    c1.train_rf = False
    beta = c1.timestep_maskers[0].beta
    before = beta.data().copy()
    for frozen in (True, False, True, False):
        pit.freeze_masks(frozen)
    assert c1.train_rf is False and layer(pit, "c0").train_rf is True
    run_epoch(pit, 1e-3, search=False)
    run_epoch(pit, 1e-3, search=True)
    assert np.array_equal(beta.data().asnumpy(), before.asnumpy()), "c1's β moved"
    moved = layer(pit, "c0").timestep_maskers[0].beta.data().asnumpy()
    assert not np.array_equal(moved, np.ones_like(moved)), "c0's β did not train"
    # The gradient stops exactly at c1's β (the gate), the others get one.
    with autograd.record():
        value = pit.regularizer("macs")
    value.backward()
    assert np.all(beta.grad().asnumpy() == 0)
    assert np.any(layer(pit, "c2").timestep_maskers[0].beta.grad().asnumpy() != 0)


# --- 5. cost_layers, discrete_cost ----------------------------------------------------------------

def bank_gradient(pit: PITModel, value_fn) -> np.ndarray:
    bank = pit.nas_parameters()[0]
    with autograd.record():
        value = value_fn()
    value.backward()
    return bank.grad().asnumpy().copy()


def reference_theta(pit: PITModel):
    """Each masker's theta from the bank's recorded array (so gradients reach the bank),
    computed masker by masker as the layers would: the reference of the fused graph."""
    data = pit.nas_parameters()[0].data()
    cache = {}

    def theta(masker):
        if id(masker) not in cache:
            if masker.frozen:
                cache[id(masker)] = masker.theta_nd()
            else:
                values = {k: p.data() for k, p in masker.forward_params().items()}
                own = masker.nas_parameter
                values[masker.param_name] = nd.slice_axis(data, axis=0, begin=own.start,
                                                          end=own.stop)
                cache[id(masker)] = masker.theta(nd, **values)
        return cache[id(masker)]
    return theta


@pytest.mark.parametrize("net, shape", [(ResBlockNet, (2, 16)), (ConcatNet, (1, 8))])
@pytest.mark.parametrize("name", ["size", "macs", "flops", "systolic:s1=4,s2=4,sharpness=5"])
@pytest.mark.parametrize("scope", ["all", "searchable"])
def test_fast_regularizer_equals_layer_by_layer_reference(net, shape, name, scope):
    """Values and gradients of the stacked, hybridized regularizer equal the layer-by-layer
    evaluation of the same cost model, at random masks. The systolic model computes fixed
    counts (ints) with the exact ceiling and soft ones with the smooth one: the fast form must
    keep fixed counts ints too."""
    pit = PITModel(make(net, "ref_"), shape, exclude_names=["fc"])
    random_masks(pit, 3)
    model = regularizer_cost_model(name)
    reference = model_costs(pit.layers, True, reference_theta(pit), pit.threshold,
                            names=(model,), scope=scope)[model]
    fast = pit.regularizer(name, scope=scope)
    assert np.isclose(float(fast.asscalar()), float(reference.asscalar()), rtol=1e-5)
    expected = bank_gradient(pit, lambda: model_costs(
        pit.layers, True, reference_theta(pit), pit.threshold, names=(model,),
        scope=scope)[model])
    found = bank_gradient(pit, lambda: pit.regularizer(name, scope=scope))
    assert np.allclose(found, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.abs(found).max() > 0


def test_cost_layers_all_counts_fixed_layers_and_their_shrinking_inputs():
    pit = PITModel(make(ResBlockNet, "cl_"), (2, 16), exclude_names=["fc"])
    fc = 8 * 4 + 4
    full = float(pit.regularizer("size").asscalar())
    assert full - float(pit.regularizer("size", scope="searchable").asscalar()) == fc
    assert pit.costs(soft=False, scope="searchable")["size"] == pit.costs(soft=False)["size"] - fc
    # The excluded classifier reads the residual channels: "all" pushes on their α more.
    alpha = layer(pit, "c0").out_features_masker
    grads = {}
    for scope in ("all", "searchable"):
        grads[scope] = bank_gradient(pit, lambda: pit.regularizer("size", scope=scope))
    start, stop = alpha.nas_parameter.start, alpha.nas_parameter.stop
    assert np.allclose(grads["all"][start:stop - 1] - grads["searchable"][start:stop - 1], 4)


def test_discrete_cost_is_the_pruned_cost_with_a_straight_through_gradient():
    pit = PITModel(make(ResBlockNet, "dc_"), (2, 16))
    random_masks(pit, 7)
    for name in ("size", "macs"):
        discrete = pit.regularizer(name, discrete=True)
        assert float(discrete.asscalar()) == pit.costs(soft=False)[name]
        soft = float(pit.regularizer(name).asscalar())
        assert soft != float(discrete.asscalar())
        reference = pit.costs(soft=True, discrete=True)[name]
        assert float(reference.asscalar()) == float(discrete.asscalar())
    grad = bank_gradient(pit, lambda: pit.regularizer("size", discrete=True))
    assert np.abs(grad).max() > 0


def test_search_graph_returns_the_network_output_and_the_regularizer():
    net = make(ResBlockNet, "sg_")
    set_bn_stats(net, 1)
    pit = PITModel(net, (2, 16))
    random_masks(pit, 1)
    x = nd.array(np.random.RandomState(0).standard_normal((3, 2, 16)))
    graph = pit.search_graph("macs")
    for hybrid in (False, True):
        if hybrid:
            pit.hybridize()
            graph.hybridize()
        out, cost = graph(x)
        assert float(nd.abs(out - pit(x)).max().asscalar()) <= 1e-6
        assert float(cost.asscalar()) == float(pit.regularizer("macs").asscalar())


def test_a_layer_of_a_model_is_called_through_the_model():
    pit = PITModel(make(ResBlockNet, "call_"), (2, 16))
    with pytest.raises(RuntimeError, match="call the PITModel"):
        pit.seed(nd.zeros((1, 2, 16)))
    assert isinstance(layer(pit, "c0"), PITConv1D)


def test_cost_models_that_read_positions_stack_per_output_shape():
    """`size` ignores output positions, so all convolutions stack; `macs` reads them, so the
    stacks split by output shape; both stay exact (checked on random counts)."""
    import bmxnet_models
    net = bmxnet_models.get_model("resnet8", prefix="r8_", widths=(4, 6, 8))
    net.initialize()
    pit = PITModel(net, (3, 12, 12))
    size, macs = pit.stacked_cost("size"), pit.stacked_cost("macs")
    assert size.stacked and macs.stacked
    assert len(size.groups) < len(macs.groups)
    random_masks(pit, 2)
    for name in ("size", "macs"):
        reference = float(pit.costs(soft=True)[name].asscalar())
        assert np.isclose(float(pit.regularizer(name).asscalar()), reference, rtol=1e-5)
