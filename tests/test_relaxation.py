"""The Gumbel-softmax relaxation shared by differentiable methods (search/relaxation.py)."""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

from lightnas_cli.search.relaxation import gumbel_softmax, temperature_at


def test_weights_sum_to_one_and_low_temperature_concentrates() -> None:
    mx.random.seed(0)
    logits = nd.array([1.0, 1.5, 0.5])
    batch = nd.zeros((64, 3, 4, 4))
    hot = gumbel_softmax(nd, logits, 0.05, "per_sample", batch).asnumpy()
    warm = gumbel_softmax(nd, logits, 5.0, "per_sample", batch).asnumpy()
    assert hot.shape == (64, 3)
    np.testing.assert_allclose(hot.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(warm.sum(axis=1), 1.0, rtol=1e-5)
    assert hot.max(axis=1).mean() > 0.95 > warm.max(axis=1).mean()
    # Per-sample noise: samples differ; per-batch: one draw of shape (options,).
    assert not np.allclose(hot[0], hot[1])
    assert gumbel_softmax(nd, logits, 1.0, "per_batch", batch).shape == (3,)
    plain = gumbel_softmax(nd, logits, 2.0, "none").asnumpy()
    np.testing.assert_allclose(plain, np.exp(logits.asnumpy() / 2) / np.exp(
        logits.asnumpy() / 2).sum(), rtol=1e-5)


def test_gradient_reaches_the_logits_and_noise_is_seeded() -> None:
    logits = nd.array([0.2, 0.1])
    logits.attach_grad()
    mx.random.seed(3)
    with autograd.record():
        weights = gumbel_softmax(nd, logits, 1.0)
        (weights * nd.array([1.0, 3.0])).sum().backward()
    assert np.abs(logits.grad.asnumpy()).sum() > 0
    mx.random.seed(3)
    again = gumbel_softmax(nd, logits, 1.0)
    np.testing.assert_array_equal(weights.asnumpy(), again.asnumpy())


def test_temperature_schedule() -> None:
    assert temperature_at(1, 5.0, 0.045) == 5.0
    assert temperature_at(3, 5.0, 0.045) == pytest.approx(5.0 * math.exp(-0.09))
    with pytest.raises(ValueError):
        gumbel_softmax(nd, nd.array([1.0]), 1.0, "sometimes")
