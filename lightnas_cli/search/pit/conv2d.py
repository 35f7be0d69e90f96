"""`PITConv2D`: channels plus receptive field and dilation searched *per kernel axis*.

PLiNIO's PITConv2d searches channels only. Here each kernel axis (height, width) gets its own β
and γ, and the tap mask is their outer product. Why per axis rather than one mask for both:

- the networks PIT targets are often time x feature maps (DS-CNN's 49 x 10 MFCCs: time by
  frequency), where the two axes mean different things and deserve different receptive fields;
- kernels are often not square (DS-CNN's first layer is 10 x 4), so one β cannot cover both;
- a separable mask (rows x columns) still prunes to a plain rectangular kernel with per-axis
  dilation, which `nn.Conv2D` can express, so export stays exact.

The cost is two small maskers more per layer, which the regularizer handles like any other.
"""
from __future__ import annotations

from mxnet.gluon import nn

from lightnas_cli.search.pit.conv import PITConvBase, ShiftedConv2D


class PITConv2D(PITConvBase):
    """Searchable `nn.Conv2D` (layout NCHW): channels, and rf/dilation per kernel axis."""

    ndim = 2
    plain_class = nn.Conv2D
    shifted_class = ShiftedConv2D
