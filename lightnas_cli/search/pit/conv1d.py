"""`PITConv1D`: the template PIT layer (Risso et al. 2021; PLiNIO `methods/pit/nn/conv1d.py`).

α prunes output channels, β the receptive field (kernel taps, contiguous from the newest) and
γ the dilation (power-of-two grids anchored at the newest tap). See `conv.py` for the shared
implementation; stride > 1 freezes β and γ as in PLiNIO.
"""
from __future__ import annotations

from mxnet.gluon import nn

from lightnas_cli.search.pit.conv import PITConvBase, ShiftedConv1D


class PITConv1D(PITConvBase):
    """Searchable `nn.Conv1D` (layout NCW): channels, receptive field and dilation."""

    ndim = 1
    plain_class = nn.Conv1D
    shifted_class = ShiftedConv1D
