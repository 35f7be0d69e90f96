"""approx_sign, -1 padding and QDense: forward values and gradients against hand computation."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from bmxnet_models.binary import (ACTIVATION_METHODS, PADDING_MODES, ApproxSign, DetSign,
                                  MeanScaled, QConv2D, QDense, activation_quantizer,
                                  get_quantizer, weight_quantizer)
from lightnas_cli.errors import ConfigError

from helpers import value_and_grad


def test_approx_sign_forward_and_gradient_by_hand():
    x = [-2.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    y, grad = value_and_grad(ApproxSign(), x)
    np.testing.assert_array_equal(y, [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1])
    # 2 - 2|x| inside [-1, 1] (Bi-Real Net eq. 3), 0 outside: by hand
    np.testing.assert_allclose(grad, [0, 0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5, 0, 0], atol=1e-6)


def test_approx_sign_scales_upstream_gradient_and_cancels_below_one():
    x = [-0.75, -0.25, 0.25, 0.6, 0.9]
    head = [2.0, 1.0, -1.0, 3.0, 1.0]
    _, grad = value_and_grad(ApproxSign(clip=0.5), x, head)
    # (2 - 2|x|) * head where |x| <= 0.5; cancelled beyond the clip
    np.testing.assert_allclose(grad, [0, 1.5, -1.5, 0, 0], atol=1e-6)
    _, wide = value_and_grad(ApproxSign(clip=3.0), [0.5, 2.0])
    np.testing.assert_allclose(wide, [1.0, 0.0], atol=1e-6)  # clip > 1 changes nothing


def test_approx_sign_hybridized_matches_imperative():
    class Wrap(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return ApproxSign()(F, x)

    block = Wrap()
    block.hybridize()
    y, grad = value_and_grad(lambda F, x: block(x), [-0.5, 0.0, 0.25, 1.2])
    np.testing.assert_array_equal(y, [-1, 1, 1, 1])
    np.testing.assert_allclose(grad, [1.0, 2.0, 1.5, 0.0], atol=1e-6)


def test_activation_method_is_chosen_by_name():
    assert set(ACTIVATION_METHODS) == {"det_sign", "approx_sign"}
    assert activation_quantizer(1, clip=0.8, method="approx_sign") == ApproxSign(0.8)
    assert activation_quantizer(1, method="det_sign") == DetSign(1.0)
    assert get_quantizer("approx_sign").clip == 1.0
    # weights keep the straight-through sign whatever the activation
    assert weight_quantizer(1, "mean") == MeanScaled(DetSign(None))
    with pytest.raises(ConfigError, match="activation"):
        activation_quantizer(1, method="relu")
    with pytest.raises(ConfigError, match="activation"):
        QConv2D(4, 3, activation="approx_sine")
    with pytest.raises(ConfigError):
        ApproxSign(clip=-1)


def test_qconv_approx_sign_gradient_reaches_input_by_hand():
    # 1x1 convolution with all-ones weights: out = sum over channels of sign(x);
    # d out / d x = (2 - 2|x|) inside [-1, 1].
    conv = QConv2D(1, 1, in_channels=2, activation="approx_sign")
    conv.initialize(mx.init.One())
    x = nd.array([[[[0.5]], [[-0.25]]]])
    x.attach_grad()
    with autograd.record():
        out = conv(x)
    out.backward()
    assert out.asnumpy().ravel().tolist() == [0.0]  # +1 - 1
    np.testing.assert_allclose(x.grad.asnumpy().ravel(), [1.0, 1.5], atol=1e-6)


@pytest.mark.parametrize("hybridize", [False, True])
def test_minus_one_padding_forward_by_hand(hybridize):
    assert PADDING_MODES == ("zero", "minus_one")
    x = nd.ones((1, 1, 3, 3))
    expected = {
        # 3x3 all-ones kernel over a 3x3 field of +1: 4 real inputs in a corner, 6 on an edge
        "zero": [[4, 6, 4], [6, 9, 6], [4, 6, 4]],
        # -1 padding: corner 4 - 5 = -1, edge 6 - 3 = 3, centre 9
        "minus_one": [[-1, 3, -1], [3, 9, 3], [-1, 3, -1]],
    }
    for mode, values in expected.items():
        conv = QConv2D(1, 3, padding=1, in_channels=1, binary_padding=mode)
        conv.initialize(mx.init.One())
        if hybridize:
            conv.hybridize()
        np.testing.assert_array_equal(conv(x).asnumpy()[0, 0], values)
        assert conv.pads_with_minus_one == (mode == "minus_one")


def test_minus_one_padding_gradient_and_full_precision_untouched():
    conv = QConv2D(1, 3, padding=1, in_channels=1, binary_padding="minus_one")
    conv.initialize(mx.init.One())
    x = nd.array(np.full((1, 1, 3, 3), 0.5, dtype=np.float32))
    x.attach_grad()
    with autograd.record():
        out = conv(x)
    out.backward()
    # each input pixel is seen by as many outputs as its 3x3 neighbourhood inside the image
    np.testing.assert_array_equal(x.grad.asnumpy()[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    weight_grad = conv.weight.grad().asnumpy()[0, 0]
    # corners of the kernel see 4 real +1 inputs and 5 padded -1: 4 - 5 = -1
    np.testing.assert_array_equal(weight_grad, [[-1, 3, -1], [3, 9, 3], [-1, 3, -1]])
    # 32-bit layers pad with zeros whatever binary_padding says
    full = QConv2D(1, 3, padding=1, in_channels=1, bits=32, binary_padding="minus_one")
    full.initialize(mx.init.One())
    assert not full.pads_with_minus_one
    np.testing.assert_array_equal(full(nd.ones((1, 1, 3, 3))).asnumpy()[0, 0],
                                  [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    with pytest.raises(ConfigError, match="binary_padding"):
        QConv2D(1, 3, binary_padding="reflect")


@pytest.mark.parametrize("weight_scaling", ["none", "mean"])
def test_qdense_forward_by_hand(weight_scaling):
    dense = QDense(2, in_units=3, use_bias=True, weight_scaling=weight_scaling)
    dense.initialize()
    w = np.array([[0.5, -1.0, 1.5], [-0.2, 0.0, 0.4]], dtype=np.float32)
    dense.weight.set_data(nd.array(w))
    dense.bias.set_data(nd.array([0.5, -1.0]))
    x = nd.array([[0.3, -2.0, 0.0], [-0.1, 0.2, -0.3]])
    # sign(x) = [1, -1, 1], [-1, 1, -1]; sign(w) = [1, -1, 1], [-1, 1, 1]
    dots = np.array([[3, -1], [-3, 1]], dtype=np.float32)
    if weight_scaling == "mean":
        dots = dots * np.array([1.0, 0.2], dtype=np.float32)  # mean |w| per output unit
    expected = dots + np.array([0.5, -1.0], dtype=np.float32)
    np.testing.assert_allclose(dense(x).asnumpy(), expected, rtol=1e-6)
    dense.hybridize()
    np.testing.assert_allclose(dense(x).asnumpy(), expected, rtol=1e-6)
    assert dense.is_binary and dense.in_units == 3


def test_qdense_gradients_and_deferred_in_units():
    dense = QDense(1, activation="approx_sign")
    dense.initialize(mx.init.One())
    x = nd.array([[[0.5, -2.0], [0.0, 0.25]]])  # flattened to 4 inputs
    x.attach_grad()
    with autograd.record():
        out = dense(x)
    out.backward()
    assert dense.weight.shape == (1, 4)
    assert out.asnumpy().ravel().tolist() == [2.0]  # 1 - 1 + 1 + 1
    # d/dx: weight (1) * (2 - 2|x|) inside [-1, 1], 0 outside
    np.testing.assert_allclose(x.grad.asnumpy().ravel(), [1.0, 0.0, 2.0, 1.5], atol=1e-6)
    # d/dw: straight-through: sign(x) of each input
    np.testing.assert_array_equal(dense.weight.grad().asnumpy().ravel(), [1, -1, 1, 1])
    full = QDense(3, in_units=4, bits=32)
    full.initialize(mx.init.One())
    np.testing.assert_array_equal(full(nd.array([[0.5, -2.0, 0.0, 0.25]])).asnumpy(),
                                  [[-1.25] * 3])


def test_qdense_exports_and_reloads(tmp_path):
    net = gluon.nn.HybridSequential()
    net.add(QDense(4, in_units=6, weight_scaling="mean"), gluon.nn.Dense(2, in_units=4))
    net.initialize(mx.init.Normal(0.5))
    net.hybridize()
    x = nd.array(np.random.RandomState(0).normal(size=(3, 6)))
    expected = net(x).asnumpy()
    net.export(str(tmp_path / "qdense"), epoch=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = gluon.SymbolBlock.imports(str(tmp_path / "qdense-symbol.json"), ["data"],
                                           str(tmp_path / "qdense-0001.params"))
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)
