"""Architecture + weights -> plain HybridBlock -> symbol JSON + params, one folder per epoch.

An export of epoch N is the folder `<out>/epoch-NNNN/`, with one sub-folder per kind:

- `trainable/`: the latent full-precision weights, so the network can be trained further
  (e.g. imported with `SymbolBlock.imports` and fine-tuned);
- `inference_only/`: the weights a deployment reads: binary layers hold their weights already
  quantized (sign times scale), which the graph's quantizer maps to themselves. Outputs are
  identical to the trainable export; the weights compress to 1 bit each.

Each kind folder holds `<name>-symbol.json`, `<name>-NNNN.params`, `<name>-NNNN-architecture.json`
and `export.json` (epoch, kind, and the SHA-256 of the three files). A folder only ever holds
the files of one epoch: it is written whole under a temporary name and renamed into place, so a
symbol can never sit beside the params of another epoch (exporting epoch 1 after epoch 3 used
to replace the symbol beside epoch 3's params: both loaded together without an error and gave
a wrong network). `load_exported(folder)` checks the checksums before loading.

Both kinds load in stock MXNet with `gluon.SymbolBlock.imports(symbol, ["data"], params)`.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.errors import CheckpointError
from lightnas_cli.files import sha256_file
from lightnas_cli.search.base import Architecture

KINDS = ("inference_only", "trainable")
MANIFEST = "export.json"


def epoch_folder(out: Path, epoch: int) -> Path:
    """Where epoch `epoch`'s exports live under `out`."""
    return Path(out) / f"epoch-{epoch:04d}"


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


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _replace_folder(staged: Path, final: Path) -> None:
    """Put `staged` at `final`; an older export of the same epoch and kind is swapped out."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)


def export_network(net: gluon.HybridBlock, architecture: Architecture, folder: Path,
                   name: str, epoch: int, kind: str) -> dict[str, Path]:
    """Hybridize, trace with one batch and write one kind folder (see the module docstring)."""
    staged = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    try:
        net.hybridize()
        net(nd.zeros((1, *architecture.input_shape)))
        net.export(str(staged / name), epoch=epoch)
        files = {"symbol": f"{name}-symbol.json", "params": f"{name}-{epoch:04d}.params",
                 "architecture": f"{name}-{epoch:04d}-architecture.json"}
        (staged / files["architecture"]).write_text(architecture.to_json() + "\n",
                                                    encoding="utf-8")
        manifest = {"epoch": epoch, "kind": kind, "name": name, "files": files,
                    "sha256": {key: sha256_file(staged / file) for key, file in files.items()}}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(staged)
        _replace_folder(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return {key: folder / file for key, file in files.items()} | {"folder": folder}


def read_manifest(folder: Path) -> dict:
    """An export folder's manifest, with every file's checksum verified."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files, sums = manifest["files"], manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder} is not a complete LightNAS export (no readable "
                              f"{MANIFEST}: {exc}); export the run again") from None
    for key, file in files.items():
        path = folder / file
        if not path.is_file() or sha256_file(path) != sums.get(key):
            raise CheckpointError(f"{path} is missing or does not match {folder / MANIFEST} "
                                  f"(changed or from another export); export the run again")
    return manifest


def load_exported(folder: Path, ctx: Any = None) -> gluon.SymbolBlock:
    """Load an export folder after checking that its files belong together (stock MXNet
    needs only the symbol and params files; this adds the check)."""
    manifest = read_manifest(folder)
    files = manifest["files"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gluon.SymbolBlock.imports(str(Path(folder) / files["symbol"]), ["data"],
                                         str(Path(folder) / files["params"]),
                                         ctx=ctx or mx.cpu())


def export_architecture(method: Any, architecture: Architecture, out: Path, name: str,
                        epoch: int, kinds: tuple[str, ...] = KINDS,
                        check: bool = True) -> dict[str, dict[str, Path]]:
    """Build the plain network of `architecture` and export each kind to
    `out/epoch-NNNN/<kind>/`.

    With `check`, each export is re-imported and compared with the in-process network
    (max abs difference <= 1e-5), so a broken export fails loudly here, not at deployment.
    """
    written: dict[str, dict[str, Path]] = {}
    probe = nd.array(np.random.RandomState(epoch).uniform(-1, 1, (2, *architecture.input_shape)))
    for kind in kinds:
        net = method.build(architecture)
        if kind == "inference_only":
            quantize_binary_weights(net)
        paths = export_network(net, architecture, epoch_folder(out, epoch) / kind, name, epoch,
                               kind)
        if check:
            expected = net(probe).asnumpy()
            got = load_exported(paths["folder"])(probe).asnumpy()
            diff = float(np.abs(expected - got).max())
            if diff > 1e-5:
                raise RuntimeError(f"exported {kind} model differs from the network by {diff}")
        written[kind] = paths
    return written
