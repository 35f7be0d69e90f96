"""Cost models by name, computed from per-layer descriptions.

One implementation serves ENAS rewards, PIT regularizers, architecture records, graphs and
`lightnas summary`:

- `Layer` (layer.py): what a cost model sees of a layer: operation, channels (plain or soft),
  kernel, stride, dilation, groups, input/output shape, weight precision;
- the registry (registry.py): `get_cost_model(name, **options)`, `available_cost_models()`,
  `register_cost_model` for new models;
- built-in models, one module each: `params` (params.py), `macs` and `flops` (macs.py),
  `binary_memory` (memory.py), `ops` (ops.py), `systolic` (systolic.py: cycles on a systolic
  array, exact or with a smooth ceiling), `latency_table` (latency_table.py: measured
  per-block latency, priced from "block" descriptions; `lightnas latency` builds the tables);
- `profile(net, input_shape)` (profile.py): the descriptions of a live network;
- `CostSummary` / `summarize` (summary.py): parameters and MACs by precision.

Counting convention (PLiNIO's, so results compare): parameters include biases; MACs are one
per weight per output position plus the bias (Conv1d 3->32, k=3, length 100: 320 parameters,
32,000 MACs); FLOPs = 2 x MACs. Binary and full-precision counts are kept apart wherever a
layer is binarized. Batch norms are left out of searches (they fold into the neighbouring
layer at deployment); Larq-style summaries count their scale and shift (`norm_layers=True`).
"""
from lightnas_cli.costs.layer import (BINARY_BITS, FLOAT_BITS, Layer, conv_macs, conv_params,
                                      dense_macs, dense_params)
from lightnas_cli.costs.registry import (CostModel, available_cost_models, cost_model_class,
                                         cost_model_from_spec, cost_unit, get_cost_model,
                                         parse_cost_spec, register_cost_model)
# Built-in cost models register themselves on import.
from lightnas_cli.costs import params as _params  # noqa: F401,E402  (params)
from lightnas_cli.costs import macs as _macs  # noqa: F401,E402  (macs, flops)
from lightnas_cli.costs import memory as _memory  # noqa: F401,E402  (binary_memory)
from lightnas_cli.costs import ops as _ops  # noqa: F401,E402  (ops)
from lightnas_cli.costs import systolic as _systolic  # noqa: F401,E402  (systolic)
from lightnas_cli.costs import latency_table as _latency_table  # noqa: F401,E402  (latency_table)
from lightnas_cli.costs.ops import BINARY_MACS_PER_OP  # noqa: E402
from lightnas_cli.costs.profile import describe_block, describe_norm, profile  # noqa: E402
from lightnas_cli.costs.summary import MIB, CostSummary, summarize  # noqa: E402

__all__ = [
    "Layer", "CostModel", "CostSummary", "register_cost_model", "get_cost_model",
    "available_cost_models", "cost_model_class", "cost_unit", "profile", "describe_block",
    "parse_cost_spec", "cost_model_from_spec",
    "describe_norm", "summarize", "conv_params", "conv_macs", "dense_params", "dense_macs",
    "FLOAT_BITS", "BINARY_BITS", "BINARY_MACS_PER_OP", "MIB",
]
