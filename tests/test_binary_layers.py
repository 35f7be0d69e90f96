"""Binary quantizers and QConv2D: forward values and straight-through gradients by hand."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from bmxnet_models.binary import (DetSign, Identity, MeanScaled, QConv2D, activation_quantizer,
                                  available_quantizers, get_quantizer, weight_quantizer)
from lightnas_cli.errors import ConfigError

from helpers import value_and_grad


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def test_det_sign_forward_and_gradient_default_clip():
    x = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    y, grad = value_and_grad(DetSign(), x)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1])  # sign(0) = +1
    # gradient of clip(x, -1, 1): 1 inside, including the borders, 0 outside
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


def test_det_sign_gradient_scales_upstream_gradient_with_custom_clip():
    x = [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 3.0]
    head = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    y, grad = value_and_grad(DetSign(clip=0.5), x, head)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(grad, [0, 2, 3, 4, 5, 6, 0, 0])


def test_det_sign_without_clip_is_plain_straight_through():
    y, grad = value_and_grad(DetSign(clip=None), [-5.0, -0.1, 0.0, 7.0])
    np.testing.assert_array_equal(y, [-1, -1, 1, 1])
    np.testing.assert_array_equal(grad, [1, 1, 1, 1])


def test_det_sign_hybridized_matches_imperative():
    class Wrap(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return DetSign(clip=0.5)(F, x)

    block = Wrap()
    block.hybridize()
    y, grad = value_and_grad(lambda F, x: block(x), [-0.75, -0.5, 0.0, 0.25, 0.6])
    np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 0])


def test_weight_scaling_mean_forward_values():
    w = np.array([[[[0.5, -1.0], [2.0, -0.5]]],        # mean |w| = 1.0
                  [[[0.0, -0.2], [0.4, 0.2]]]],       # mean |w| = 0.2
                 dtype=np.float32)
    scaled = weight_quantizer(1, "mean")(nd, nd.array(w)).asnumpy()
    expected = np.array([[[[1.0, -1.0], [1.0, -1.0]]],
                         [[[0.2, -0.2], [0.2, 0.2]]]], dtype=np.float32)
    np.testing.assert_allclose(scaled, expected, rtol=1e-6)
    plain = weight_quantizer(1, "none")(nd, nd.array(w)).asnumpy()
    np.testing.assert_array_equal(plain, _np_sign(w))


def test_weight_quantizer_passes_gradient_beyond_one():
    # weights: straight-through everywhere (BMXNet-v2 det_sign), no gradient cancelling
    _, grad = value_and_grad(weight_quantizer(1, "none"), [[-3.0, 0.5, 2.0]])
    np.testing.assert_array_equal(grad, [[1, 1, 1]])


def test_quantizer_factories():
    assert activation_quantizer(32) == Identity()
    assert weight_quantizer(32, "mean") == Identity()
    assert activation_quantizer(1, clip=0.7) == DetSign(0.7)
    assert weight_quantizer(1, "mean") == MeanScaled(DetSign(None))
    assert "det_sign" in available_quantizers()
    assert get_quantizer("det_sign", clip=2.0).clip == 2.0
    with pytest.raises(ConfigError, match="unknown quantizer"):
        get_quantizer("approx_sine")
    with pytest.raises(ConfigError, match="bits"):
        activation_quantizer(8)
    with pytest.raises(ConfigError, match="weight_scaling"):
        weight_quantizer(1, "max")
    with pytest.raises(ConfigError):
        DetSign(clip=0)


def _inputs(shape, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=shape).astype(np.float32)
    x.flat[::7] = 0.0  # exact zeros must binarize to +1
    return x


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("weight_scaling", ["none", "mean"])
def test_qconv_binary_matches_hand_computation(use_bias, weight_scaling):
    x = _inputs((2, 4, 7, 7))
    conv = QConv2D(6, 3, strides=2, padding=1, groups=2, use_bias=use_bias,
                   weight_scaling=weight_scaling)
    conv.initialize(mx.init.Normal(0.5))
    out = conv(nd.array(x)).asnumpy()

    w = conv.weight.data().asnumpy()
    wb = _np_sign(w)
    if weight_scaling == "mean":
        wb = wb * np.abs(w).mean(axis=(1, 2, 3), keepdims=True)
    kwargs = dict(kernel=(3, 3), stride=(2, 2), pad=(1, 1), num_filter=6, num_group=2)
    if use_bias:
        conv.bias.set_data(nd.array([0.1, -0.2, 0.3, 0.0, 1.0, -1.0]))
        out = conv(nd.array(x)).asnumpy()
        expected = nd.Convolution(nd.array(_np_sign(x)), nd.array(wb), conv.bias.data(),
                                  **kwargs).asnumpy()
    else:
        expected = nd.Convolution(nd.array(_np_sign(x)), nd.array(wb), no_bias=True,
                                  **kwargs).asnumpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    conv.hybridize()
    np.testing.assert_allclose(conv(nd.array(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_qconv_full_precision_equals_gluon_conv2d_and_shares_parameters():
    x = nd.array(_inputs((2, 3, 6, 6)))
    reference = gluon.nn.Conv2D(5, 3, strides=1, padding=1, use_bias=True, in_channels=3,
                                prefix="conv_")
    reference.initialize(mx.init.Normal(0.3))
    reference.bias.set_data(nd.arange(5) / 10)
    # Same parameter names as Conv2D, so QConv2D can share (or load) its parameters.
    qconv = QConv2D(5, 3, padding=1, in_channels=3, use_bias=True, bits=32, prefix="conv_",
                    params=reference.collect_params())
    assert sorted(qconv.collect_params().keys()) == ["conv_bias", "conv_weight"]
    assert qconv.weight is reference.weight and qconv.bias is reference.bias
    np.testing.assert_allclose(qconv(x).asnumpy(), reference(x).asnumpy(), rtol=1e-6, atol=1e-6)
    assert not qconv.is_binary


def test_qconv_deferred_in_channels_and_attributes():
    for hybridize in (False, True):
        for weight_scaling in ("none", "mean"):
            conv = QConv2D(8, (3, 1), strides=(2, 1), padding=(1, 0), groups=2,
                           weight_scaling=weight_scaling)
            assert conv.in_channels == 0
            conv.initialize()
            if hybridize:
                conv.hybridize()
            out = conv(nd.ones((1, 4, 5, 5)))
            assert out.shape == (1, 8, 3, 5)
            assert conv.weight.shape == (8, 2, 3, 1)
            assert conv.in_channels == 4
    assert (conv.channels, conv.kernel_size, conv.strides, conv.padding, conv.dilation,
            conv.groups, conv.use_bias, conv.bits, conv.is_binary) == \
        (8, (3, 1), (2, 1), (1, 0), (1, 1), 2, False, 1, True)
    with pytest.raises(ConfigError):
        QConv2D(4, 3, bits=2)


def test_qconv_gradients_reach_weights_and_inputs():
    conv = QConv2D(4, 3, padding=1, in_channels=3)
    conv.initialize(mx.init.Normal(0.5))
    x = nd.array(_inputs((2, 3, 5, 5)) * 0.5)
    x.attach_grad()
    with autograd.record():
        loss = (conv(x) * nd.arange(4).reshape((1, 4, 1, 1))).sum()
    loss.backward()
    assert np.abs(conv.weight.grad().asnumpy()).sum() > 0
    # gradient cancelled exactly where |x| > 1
    outside = np.abs(x.asnumpy()) > 1
    assert outside.any()
    assert np.all(x.grad.asnumpy()[outside] == 0)
