"""MLPerf Tiny reference networks and the TCN (bmxnet_models/tinyml.py), and MNIST-1D data."""
from __future__ import annotations

import random

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

import bmxnet_models
from lightnas_cli import costs
from lightnas_cli.errors import ConfigError


def dense(i: int, o: int) -> int:
    return i * o + o


# Parameter counts by hand (biases included, batch-norm statistics not counted).
DSCNN = (64 * 10 * 4 + 64) + 4 * ((64 * 9 + 64) + dense(64, 64)) + dense(64, 12)
RESNET8 = ((16 * 3 * 9 + 16) + 2 * (16 * 16 * 9 + 16)
           + (32 * 16 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 16 + 32)
           + (64 * 32 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 32 + 64) + dense(64, 10))
AUTOENCODER = (dense(640, 128) + 3 * dense(128, 128) + dense(128, 8) + dense(8, 128)
               + 3 * dense(128, 128) + dense(128, 640))


@pytest.mark.parametrize("name, shape, out, params", [
    ("dscnn", (1, 49, 10), 12, DSCNN),
    ("resnet8", (3, 32, 32), 10, RESNET8),
    ("mobilenet_v1", (3, 96, 96), 2, None),
    ("fc_autoencoder", (1, 640), 640, AUTOENCODER),
    ("tcn", (1, 40), 10, None),
])
def test_reference_models_shapes_and_sizes(name, shape, out, params):
    net = bmxnet_models.get_model(name, prefix=f"{name}_")
    net.initialize(mx.init.Xavier())
    assert net(nd.zeros((2, *shape))).shape == (2, out)
    found = costs.summarize(costs.profile(net, shape))
    if params is not None:
        assert found.params == params
    assert name in bmxnet_models.available_models()


def test_dscnn_first_layer_gives_the_reference_25x5_map():
    net = bmxnet_models.get_model("dscnn")
    net.initialize()
    assert net[0](nd.zeros((1, 1, 49, 10))).shape == (1, 64, 25, 5)


def test_mobilenet_width_and_tcn_options():
    net = bmxnet_models.get_model("mobilenet_v1", width_multiplier=0.25)
    net.initialize()
    widths = [b._channels for b in net._children.values() if isinstance(b, mx.gluon.nn.Conv2D)]
    assert widths[0] == 8 and widths[-1] == 256
    tcn = bmxnet_models.get_model("tcn", channels=[4, 6], kernel_size=3, dilations=[1, 2])
    tcn.initialize()
    assert tcn(nd.zeros((1, 1, 16))).shape == (1, 10)
    with pytest.raises(ConfigError, match="dilations"):
        bmxnet_models.get_model("tcn", channels=[4, 6], dilations=[1])


def test_tcn_is_causal():
    tcn = bmxnet_models.get_model("tcn", channels=[4], kernel_size=3, prefix="causal_")
    tcn.initialize(mx.init.Xavier())
    block = tcn[0]
    x = nd.random.normal(shape=(1, 1, 12))
    changed = x.copy()
    changed[:, :, 8:] += 1.0
    before, after = block(x).asnumpy(), block(changed).asnumpy()
    assert np.abs(before[:, :, :8] - after[:, :, :8]).max() == 0
    assert np.abs(before[:, :, 8:] - after[:, :, 8:]).max() > 0


def test_mnist1d_generated_locally_seeded_and_side_effect_free():
    from lightnas_cli import data
    from lightnas_cli.data.mnist1d import make_mnist1d

    spec = data.describe(type("C", (), {"name": "mnist1d"})())
    assert spec.shape == (1, 40) and spec.classes == 10 and spec.layout == "NCW"
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.get_state()[1].copy(), random.getstate()
    a = make_mnist1d(seed=1, num_samples=200)
    b = make_mnist1d(seed=1, num_samples=200)
    c = make_mnist1d(seed=2, num_samples=200)
    assert np.array_equal(np.random.get_state()[1], expected_np)
    assert random.getstate() == expected_py
    assert a.x_train.shape == (160, 1, 40) and a.x_test.shape == (40, 1, 40)
    assert a.x_train.dtype == np.float32 and set(np.unique(a.y_train)) <= set(range(10))
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
