"""The FBNet and FBNet-SE spaces of the zoo (bmxnet_models/fbnet.py): the paper's layout, the
blocks, channel shuffle, the margin heads against hand-computed values, the supernet's mixing,
the symbol builder against the hybridized network (Module API), export, and that the zoo
stands without the search package."""
from __future__ import annotations

import math
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

import bmxnet_models
from bmxnet_models import fbnet
from lightnas_cli.errors import ArchitectureError, ConfigError

from conftest import REPO, cli_env
from helpers import assert_export_round_trip, random_data, randomize

TINY = dict(width_multiplier=0.25, channel_divisor=16, stem_stride=1, feature_dim=16,
            in_channels=1, classes=4)
TINY_SE = dict(width_multiplier=1 / 32, channel_divisor=8, feature_dim=8, in_channels=1,
               classes=4)


def test_fbnet_space_follows_the_paper() -> None:
    specs = fbnet.layer_specs("fbnet")
    assert len(specs) == 22
    stages = [[s for s in specs if s.stage == i] for i in range(7)]
    assert [len(stage) for stage in stages] == [1, 4, 4, 4, 4, 4, 1]
    assert [stage[0].out_channels for stage in stages] == [16, 24, 32, 64, 112, 184, 352]
    assert [stage[0].stride for stage in stages] == [1, 2, 2, 2, 1, 2, 1]
    assert all(s.stride == 1 for stage in stages for s in stage[1:])
    assert specs[0].in_channels == 16
    # The first layer of each stage has no skip: 7 layers of 8 candidates, 15 of 9.
    counts = [len(s.candidates) for s in specs]
    assert counts.count(8) == 7 and counts.count(9) == 15
    assert all("skip" not in stage[0].candidates for stage in stages)
    assert specs[2].candidates == fbnet.FBNET_CANDIDATES
    # Width multiplier and divisor: multiples of the divisor, at least the divisor.
    small = fbnet.layer_specs("fbnet", 0.25, 16)
    assert {s.out_channels % 16 for s in small} == {0} and small[-1].out_channels == 96


def test_fbnet_se_space_and_candidates() -> None:
    specs = fbnet.layer_specs("fbnet_se")
    assert [s.out_channels for s in specs] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert [s.stride for s in specs if s.index in (0, 3, 7, 13)] == [1, 2, 2, 2]
    deformable = [s.index for s in specs if "deform" in s.candidates]
    assert deformable == [14, 15]
    assert all(len(s.candidates) == 6 for s in specs if s.index not in deformable)


def test_block_shapes_residual_and_groups() -> None:
    spec = fbnet.LayerSpec("layers.0", 16, 32, 2, fbnet.FBNET_CANDIDATES[:-1], 0, 0)
    block = fbnet.make_candidate(spec, "k5_e6")
    block.initialize()
    assert block(nd.zeros((2, 16, 8, 8))).shape == (2, 32, 4, 4)
    assert not block.residual and block.depthwise._kwargs["num_group"] == 96
    same = fbnet.LayerSpec("layers.1", 16, 16, 1, fbnet.FBNET_CANDIDATES, 0, 1)
    grouped = fbnet.make_candidate(same, "k3_e1_g2")
    assert grouped.residual and grouped.expand._kwargs["num_group"] == 2
    with pytest.raises(ConfigError, match="divisible by 2"):
        fbnet.FBNetBlock(15, 16, 1, 3, 1, groups=2)
    with pytest.raises(ArchitectureError, match="no candidate 'skip'"):
        fbnet.make_candidate(spec, "skip")


def test_channel_shuffle_by_hand() -> None:
    x = nd.arange(6).reshape((1, 6, 1, 1))
    # Two groups of three channels (0 1 2 | 3 4 5) interleave to 0 3 1 4 2 5.
    out = fbnet.channel_shuffle(nd, x, 2, 6).asnumpy().ravel().tolist()
    assert out == [0, 3, 1, 4, 2, 5]
    # With a spatial map each position moves with its channel.
    y = nd.arange(24).reshape((1, 6, 2, 2))
    shuffled = fbnet.channel_shuffle(nd, y, 3, 6).asnumpy()
    assert shuffled.shape == (1, 6, 2, 2)
    assert [int(c[0, 0]) // 4 for c in shuffled[0]] == [0, 2, 4, 1, 3, 5]


def test_margin_heads_by_hand() -> None:
    cos = np.array([[0.6, -0.2, 0.1], [0.3, 0.9, -0.95]], dtype=np.float32)
    label = nd.array([0, 2])
    s, m = 30.0, 0.3
    am = fbnet.margin_logits(nd, nd.array(s * cos), label, "amsoftmax", m, s).asnumpy()
    expected = s * cos
    expected[0, 0] = s * (0.6 - 0.3)
    expected[1, 2] = s * (-0.95 - 0.3)
    np.testing.assert_allclose(am, expected, rtol=1e-5, atol=1e-4)
    s, m = 64.0, 0.5
    arc = fbnet.margin_logits(nd, nd.array(s * cos), label, "arcface", m, s).asnumpy()
    expected = s * cos
    expected[0, 0] = s * math.cos(math.acos(0.6) + 0.5)               # θ + m <= π
    expected[1, 2] = s * (-0.95 - 0.5 * math.sin(0.5))                # θ + m > π: fallback
    np.testing.assert_allclose(arc, expected, rtol=1e-4, atol=1e-3)
    plain = fbnet.margin_logits(nd, nd.array(cos), label, "softmax", 0.0, 1.0)
    np.testing.assert_array_equal(plain.asnumpy(), cos)


def test_cosine_head_outputs_scaled_cosines() -> None:
    head = fbnet.CosineHead(2, 3, "arcface", 0.5, 64.0)
    head.initialize()
    head.weight.set_data(nd.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    out = head(nd.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])).asnumpy()
    np.testing.assert_allclose(out, [[64.0, 64.0 / math.sqrt(2)], [0.0, 0.0]], atol=1e-4)
    net = bmxnet_models.get_model("fbnet", head="amsoftmax", **TINY)
    assert (net.head.kind, net.head.margin, net.head.scale) == ("amsoftmax", 0.3, 30.0)


def test_supernet_one_hot_mixture_is_the_chosen_network() -> None:
    """With one-hot weights the supernet computes the derived network (same weights by path),
    hybridized or not; without weights it averages the candidates."""
    from lightnas_cli.search.training import structural_params

    mx.random.seed(0)
    supernet = bmxnet_models.get_model("fbnet", prefix="fbnet_", **TINY)
    supernet.initialize(mx.init.Xavier())
    x = random_data((2, 1, 8, 8))
    supernet(x)
    randomize(supernet)
    chosen = [len(s.candidates) - 1 - (s.index % 3) for s in supernet.specs]
    names = [s.candidates[i] for s, i in zip(supernet.specs, chosen)]
    plain = bmxnet_models.get_model("fbnet", choices=names, prefix="fbnet_", **TINY)
    plain.initialize()
    plain(x)
    source = structural_params(supernet)
    for path, param in structural_params(plain).items():
        parts = path.split(".")
        if parts[0] == "layers" and parts[2] == "block":
            path = ".".join(["layers", parts[1], "candidates", str(chosen[int(parts[1])])]
                            + parts[3:])
        param.set_data(source[path].data())
    weights = [nd.one_hot(nd.array([i]), len(s.candidates)) for s, i in
               zip(supernet.specs, chosen)]
    expected = plain(x).asnumpy()
    np.testing.assert_allclose(supernet(x, *weights).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    supernet.hybridize()
    plain.hybridize()
    np.testing.assert_allclose(supernet(x, *weights).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plain(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_skip_keeps_the_graph_connected_when_hybridized() -> None:
    names = ["k3_e1"] + ["skip" if "skip" in s.candidates else "k3_e1"
                         for s in fbnet.layer_specs("fbnet", 0.25, 16)[1:]]
    net = bmxnet_models.get_model("fbnet", choices=names, **TINY)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = random_data((2, 1, 8, 8))
    with autograd.record():
        out = net(x)
    out.backward()
    stem_grad = net.stem[0].weight.grad().abs().sum().asscalar()
    assert stem_grad > 0


@pytest.mark.parametrize("name,options,choices", [
    ("fbnet", TINY, None),
    ("fbnet", dict(TINY, bn="outside", last_kernel=3, head="arcface"), "k5_e1_g2"),
    ("fbnet_se", TINY_SE, ["shuffle_se"] * 14 + ["deform_se", "deform"]),
])
def test_symbol_builder_equals_the_gluon_network(name, options, choices) -> None:
    """`fbnet_symbol` bound with MXNet's Module API to the Gluon network's weights computes
    what the hybridized Gluon network computes (derived or supernet with mixing inputs)."""
    net = bmxnet_models.get_model(name, choices=choices, prefix=f"{name}_", **options)
    net.initialize(mx.init.Xavier())
    x = random_data((2, 1, 8, 8))
    mixes = []
    if choices is None:
        rng = np.random.RandomState(0)
        mixes = [nd.array(rng.dirichlet(np.ones(len(s.candidates)), size=2))
                 for s in net.specs]
    net(x, *mixes)
    randomize(net)
    net.hybridize()
    expected = net(x, *mixes).asnumpy()
    symbol = fbnet.fbnet_symbol(name, choices=choices, **options)
    data_names = ["data"] + [f"mix{i}" for i in range(len(mixes))]
    module = mx.mod.Module(symbol, data_names=data_names, label_names=None)
    module.bind(data_shapes=[(n, a.shape) for n, a in zip(data_names, [x] + mixes)],
                for_training=False)
    params = {k: v.data() for k, v in net.collect_params().items()}
    aux_names = set(symbol.list_auxiliary_states())
    module.set_params({k: v for k, v in params.items() if k not in aux_names},
                      {k: v for k, v in params.items() if k in aux_names})
    module.forward(mx.io.DataBatch([x] + mixes), is_train=False)
    got = module.get_outputs()[0].asnumpy()
    # The graph executor fuses convolution and batch norm (oneDNN): float32 rounding differs.
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_derived_network_exports_and_reloads(tmp_path) -> None:
    net = bmxnet_models.get_model("fbnet", choices="k5_e6", prefix="fbnet_",
                                  **dict(TINY, head="amsoftmax"))
    assert_export_round_trip(net, random_data((2, 1, 8, 8)), str(tmp_path / "net"), 3)
    se = bmxnet_models.get_model("fbnet_se", choices=["group"] * 14 + ["deform"] * 2,
                                 prefix="se_", **TINY_SE)
    assert_export_round_trip(se, random_data((2, 1, 8, 8)), str(tmp_path / "se"), 1)


def test_bad_choices_are_refused() -> None:
    with pytest.raises(ArchitectureError, match="no candidate 'skip'"):
        bmxnet_models.get_model("fbnet", choices="skip", **TINY)
    with pytest.raises(ArchitectureError, match="22 searchable layers"):
        bmxnet_models.get_model("fbnet", choices=["k3_e1"] * 3, **TINY)
    with pytest.raises(ConfigError, match="channel_divisor must be even"):
        bmxnet_models.get_model("fbnet", **dict(TINY, channel_divisor=3))


def test_the_fbnet_zoo_imports_without_the_search_package() -> None:
    script = ("import sys, bmxnet_models; "
              "bmxnet_models.get_model('fbnet', width_multiplier=0.25); "
              "from bmxnet_models.fbnet import fbnet_symbol; fbnet_symbol('fbnet_se'); "
              "bad = [m for m in sys.modules if m.startswith('lightnas_cli.search')]; "
              "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
