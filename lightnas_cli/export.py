"""Architecture + weights -> plain HybridBlock -> symbol JSON + params.

Two kinds, side by side under `exported_models/`:
- `trainable/`: the latent full-precision weights, so the network can be trained further
  (e.g. imported with `SymbolBlock.imports` and fine-tuned).
- `inference_only/`: the weights a deployment reads: binary layers hold their weights already
  quantized (sign times scale), which the graph's quantizer maps to themselves. Outputs are
  identical to the trainable export; the weights compress to 1 bit each.

Both load in stock MXNet with `gluon.SymbolBlock.imports(symbol, ["data"], params)`.
"""
from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.runs import atomic_write_text
from lightnas_cli.search.base import Architecture

KINDS = ("inference_only", "trainable")


def quantize_binary_weights(net: gluon.Block) -> int:
    """Replace each binary layer's latent weights by their quantized values; returns the count.

    A layer takes part when it says `is_binary` and offers `quantized_weight(F, weight)`, the
    same function its forward pass applies, so re-applying it leaves outputs unchanged.
    """
    changed = 0

    def walk(block: gluon.Block) -> None:
        nonlocal changed
        if getattr(block, "is_binary", False) and hasattr(block, "quantized_weight"):
            weight = block.weight
            for ctx in weight.list_ctx():
                latent = weight.data(ctx)
                latent[:] = block.quantized_weight(nd, latent)
            changed += 1
        for child in block._children.values():
            walk(child)

    walk(net)
    return changed


def export_network(net: gluon.HybridBlock, input_shape: list[int], directory: Path, name: str,
                   epoch: int) -> dict[str, Path]:
    """Hybridize, trace with one batch and write `<name>-symbol.json`, `<name>-NNNN.params`."""
    directory.mkdir(parents=True, exist_ok=True)
    net.hybridize()
    net(nd.zeros((1, *input_shape)))
    # Write under a temporary name and rename, so a kill never leaves a half-written export.
    tmp_prefix = directory / f".tmp-{name}"
    net.export(str(tmp_prefix), epoch=epoch)
    symbol = directory / f"{name}-symbol.json"
    params = directory / f"{name}-{epoch:04d}.params"
    Path(f"{tmp_prefix}-symbol.json").replace(symbol)
    Path(f"{tmp_prefix}-{epoch:04d}.params").replace(params)
    return {"symbol": symbol, "params": params}


def load_exported(symbol: Path, params: Path, ctx=None) -> gluon.SymbolBlock:
    """Load an exported network in stock MXNet (no LightNAS code needed to run it)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gluon.SymbolBlock.imports(str(symbol), ["data"], str(params), ctx=ctx or mx.cpu())


def export_architecture(method, architecture: Architecture, directory: Path, name: str,
                        epoch: int, kinds: tuple[str, ...] = KINDS,
                        check: bool = True) -> dict[str, dict[str, Path]]:
    """Build the plain network of `architecture` and export each kind under directory/kind/.

    With `check`, each export is re-imported and compared with the in-process network
    (max abs difference <= 1e-5), so a broken export fails loudly here, not at deployment.
    """
    written: dict[str, dict[str, Path]] = {}
    probe = nd.array(np.random.RandomState(epoch).uniform(-1, 1, (2, *architecture.input_shape)))
    for kind in kinds:
        net = method.build(architecture)
        if kind == "inference_only":
            quantize_binary_weights(net)
        paths = export_network(net, architecture.input_shape, directory / kind, name, epoch)
        arch_file = directory / kind / f"{name}-{epoch:04d}-architecture.json"
        atomic_write_text(arch_file, architecture.to_json() + "\n")
        paths["architecture"] = arch_file
        if check:
            expected = net(probe).asnumpy()
            got = load_exported(paths["symbol"], paths["params"])(probe).asnumpy()
            diff = float(np.abs(expected - got).max())
            if diff > 1e-5:
                raise RuntimeError(f"exported {kind} model differs from the network by {diff}")
        written[kind] = paths
    return written
