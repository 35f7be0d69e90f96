"""Architecture + weights -> plain HybridBlock -> symbol JSON + params, one folder per epoch.

An export of epoch N is the folder `<out>/epoch-NNNN/`, with one sub-folder per kind:

- `trainable/`: the latent full-precision weights, so the network can be trained further
  (e.g. imported with `SymbolBlock.imports` and fine-tuned);
- `inference_only/`: the weights a deployment reads: binary layers hold their weights already
  quantized (sign times scale), which the graph's quantizer maps to themselves. Outputs are
  identical to the trainable export; the weights compress to 1 bit each;
- `packed/`: the same weights with every binary weight tensor bit-packed (1 bit per weight
  plus one float32 scale per output channel) in one `<name>-NNNN.packed` file (an NDArray
  dict); `load_exported(folder)` unpacks it into a SymbolBlock identical to `inference_only`.

Each kind folder holds `<name>-symbol.json`, `<name>-NNNN.params` (packed: `.packed`),
`<name>-NNNN-architecture.json`, optionally `<name>-NNNN.onnx` (`formats=("onnx",)`, checked by
`onnx.checker` and by ONNX's reference evaluator against MXNet) and `export.json` (epoch, kind,
and the SHA-256 of every file). A folder only ever holds
the files of one epoch: it is written whole under a temporary name and renamed into place, so a
symbol can never sit beside the params of another epoch (exporting epoch 1 after epoch 3 used
to replace the symbol beside epoch 3's params: both loaded together without an error and gave
a wrong network). `load_exported(folder)` checks the checksums before loading.

The first two kinds load in stock MXNet with `gluon.SymbolBlock.imports(symbol, ["data"],
params)`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.errors import CheckpointError, ExportError
from lightnas_cli.files import sha256_file
from lightnas_cli.search.base import Architecture

#: Every kind `export_architecture` writes; a run's final export writes the first two.
KINDS = ("inference_only", "trainable", "packed")
DEFAULT_KINDS = ("inference_only", "trainable")
#: Extra formats written beside a kind's MXNet files.
FORMATS = ("onnx",)
MANIFEST = "export.json"
#: Largest difference allowed between ONNX's reference evaluator and MXNet, relative to the
#: outputs' scale (max |output|, at least 1): float32 rounding grows with the logits, and a
#: 4-epoch FBNet on digits (logits up to ~4) differed by 1.96e-4 where the ops all convert.
ONNX_TOLERANCE = 1e-4


def epoch_folder(out: Path, epoch: int) -> Path:
    """Where epoch `epoch`'s exports live under `out`."""
    return Path(out) / f"epoch-{epoch:04d}"


def binary_layers(net: gluon.Block) -> list[gluon.Block]:
    """Layers whose weights are binary: they say `is_binary` and offer
    `quantized_weight(F, weight)`, the function their forward pass applies to the weights."""
    found: list[gluon.Block] = []

    def walk(block: gluon.Block) -> None:
        if getattr(block, "is_binary", False) and hasattr(block, "quantized_weight"):
            found.append(block)
        for child in block._children.values():
            walk(child)

    walk(net)
    return found


def quantize_binary_weights(net: gluon.Block) -> list[str]:
    """Replace each binary layer's latent weights by their quantized values (the function is
    idempotent, so outputs stay the same); returns the weights' parameter names."""
    names = []
    for block in binary_layers(net):
        weight = block.weight
        for ctx in weight.list_ctx():
            latent = weight.data(ctx)
            latent[:] = block.quantized_weight(nd, latent)
        names.append(weight.name)
    return names


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


# --- packed binary weights ------------------------------------------------------------------

def pack_params(params: dict[str, nd.NDArray], binary: set[str]) -> dict[str, nd.NDArray]:
    """An MXNet params dict ("arg:name" / "aux:name" keys) with every binary weight stored as
    `bits:<key>` (uint8, np.packbits of w < 0), `scale:<key>` (float32, one per output
    channel) and `shape:<key>` (int64); other arrays stay float32 under their own key.

    A binary layer's quantized weight is ±scale per output channel (scale 1 without weight
    scaling), so this is lossless; a tensor that is not refuses to pack (ExportError)."""
    packed: dict[str, nd.NDArray] = {}
    for key, array in params.items():
        name = key.split(":", 1)[1]
        if name not in binary:
            packed[key] = array
            continue
        values = array.asnumpy().astype(np.float32)
        rows = values.reshape(values.shape[0], -1)
        scale = np.abs(rows[:, :1])
        if not np.array_equal(np.abs(rows), np.broadcast_to(scale, rows.shape)):
            raise ExportError(f"{name}: binary weights are not ±scale per output channel; "
                              f"cannot bit-pack them")
        packed[f"bits:{key}"] = nd.array(np.packbits(values.reshape(-1) < 0), dtype=np.uint8)
        packed[f"scale:{key}"] = nd.array(scale[:, 0], dtype=np.float32)
        packed[f"shape:{key}"] = nd.array(np.array(values.shape), dtype=np.int64)
    return packed


def unpack_params(packed: dict[str, nd.NDArray]) -> dict[str, nd.NDArray]:
    """The params dict `pack_params` was given (bit for bit)."""
    params: dict[str, nd.NDArray] = {}
    for key, array in packed.items():
        kind, _, rest = key.partition(":")
        if kind in ("arg", "aux"):
            params[key] = array
        elif kind == "bits":
            shape = tuple(int(v) for v in packed[f"shape:{rest}"].asnumpy())
            count = int(np.prod(shape))
            negative = np.unpackbits(array.asnumpy().astype(np.uint8))[:count].astype(bool)
            signs = np.where(negative, np.float32(-1), np.float32(1)).reshape(shape[0], -1)
            scale = packed[f"scale:{rest}"].asnumpy().astype(np.float32)[:, None]
            params[rest] = nd.array((signs * scale).reshape(shape), dtype=np.float32)
    return params


# --- ONNX -------------------------------------------------------------------------------------

def _onnx() -> Any:
    try:
        import onnx
        from onnx import reference  # noqa: F401  (the numpy-only evaluator, onnx >= 1.13)
    except ImportError:
        raise ExportError("ONNX export needs the `onnx` package: pip install -e '.[onnx]' "
                          "(onnx==1.14.1; shell_scripts/setup.sh installs it)") from None
    return onnx


def export_onnx(symbol: Path, params: Path, target: Path, input_shape: list[int],
                probe: np.ndarray, expected: np.ndarray) -> float:
    """Convert an MXNet export to ONNX (batch axis dynamic), check the model with
    `onnx.checker`, run it with ONNX's reference evaluator on `probe` and compare with the
    network's outputs `expected`; returns the largest difference (ExportError if above
    ONNX_TOLERANCE times the outputs' scale, or if MXNet cannot convert an operator)."""
    onnx = _onnx()
    from onnx.reference import ReferenceEvaluator
    shape = (int(probe.shape[0]), *input_shape)
    # MXNet's converter refuses layout="NCW" (1-D convolutions and pooling, e.g. PIT's TCN),
    # although its Conv mapping is rank-generic; without the attribute MXNet infers NCW from
    # the 1-D kernel, so the graph given to the converter means the same.
    graph = json.loads(Path(symbol).read_text(encoding="utf-8"))
    for node in graph["nodes"]:
        if node.get("attrs", {}).get("layout") == "NCW":
            del node["attrs"]["layout"]
    # The converter takes arg and aux parameters in one dict, without the file's prefixes.
    weights = {key.split(":", 1)[1]: value for key, value in nd.load(str(params)).items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mx.onnx.export_model(mx.sym.load_json(json.dumps(graph)), weights,
                                 in_shapes=[shape], in_types=[np.float32],
                                 onnx_file_path=str(target), dynamic=True,
                                 dynamic_input_shapes=[(None, *input_shape)])
    except (AttributeError, NotImplementedError, ValueError) as exc:
        raise ExportError(f"MXNet cannot convert this network to ONNX: {exc}") from None
    model = onnx.load(str(target))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX model fails onnx.checker: {exc}") from None
    got = ReferenceEvaluator(model).run(None, {"data": probe.astype(np.float32)})[0]
    diff = float(np.abs(np.asarray(got) - expected).max())
    allowed = ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if not diff <= allowed:
        raise ExportError(f"the ONNX model's outputs differ from the network's by {diff:.3g} "
                          f"(> {allowed:.3g}, {ONNX_TOLERANCE} of the outputs' scale); the "
                          f"export is not trustworthy")
    return diff


# --- writing export folders -------------------------------------------------------------------

def export_network(net: gluon.HybridBlock, architecture: Architecture, folder: Path,
                   name: str, epoch: int, kind: str, formats: tuple[str, ...] = (),
                   probe: np.ndarray | None = None) -> dict[str, Path]:
    """Hybridize, trace with one batch and write one kind folder (see the module docstring).

    `net` holds the weights of its kind already (inference_only and packed: quantized).
    The folder is staged under a temporary name and renamed into place whole."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}; available: {FORMATS}")
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
        if "onnx" in formats:
            files["onnx"] = f"{name}-{epoch:04d}.onnx"
            probe = probe if probe is not None else np.zeros((2, *architecture.input_shape),
                                                             dtype=np.float32)
            expected = net(nd.array(probe)).asnumpy()
            export_onnx(staged / files["symbol"], staged / files["params"],
                        staged / files["onnx"], list(architecture.input_shape), probe,
                        expected)
        if kind == "packed":
            binary = {block.weight.name for block in binary_layers(net)}
            plain = staged / files.pop("params")
            files["packed"] = f"{name}-{epoch:04d}.packed"
            nd.save(str(staged / files["packed"]), pack_params(nd.load(str(plain)), binary))
            plain.unlink()
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
    """Load an export folder of any kind after checking that its files belong together
    (stock MXNet needs only the symbol and params files; this adds the check, and unpacks a
    `packed` export)."""
    manifest = read_manifest(folder)
    files, folder = manifest["files"], Path(folder)
    params_file = folder / files["params"] if "params" in files else None
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
        warnings.simplefilter("ignore")
        if params_file is None:
            params_file = Path(scratch) / "unpacked.params"
            nd.save(str(params_file), unpack_params(nd.load(str(folder / files["packed"]))))
        return gluon.SymbolBlock.imports(str(folder / files["symbol"]), ["data"],
                                         str(params_file), ctx=ctx or mx.cpu())



def export_architecture(method: Any, architecture: Architecture, out: Path, name: str,
                        epoch: int, kinds: tuple[str, ...] = DEFAULT_KINDS,
                        check: bool = True,
                        formats: tuple[str, ...] = ()) -> dict[str, dict[str, Path]]:
    """Build the plain network of `architecture` and export each kind to
    `out/epoch-NNNN/<kind>/`. `formats` (e.g. ("onnx",)) are written beside the
    inference_only kind, the deployable one (added to `kinds` if missing).

    With `check`, each export is re-imported and compared with the in-process network
    (max abs difference <= 1e-5), so a broken export fails loudly here, not at deployment.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ExportError(f"unknown export kind(s) {sorted(unknown)}; available: {KINDS}")
    if formats and "inference_only" not in kinds:
        kinds = ("inference_only",) + tuple(kinds)
    written: dict[str, dict[str, Path]] = {}
    probe = np.random.RandomState(epoch).uniform(-1, 1, (2, *architecture.input_shape))
    probe = probe.astype(np.float32)
    for kind in kinds:
        net = method.build(architecture)
        if kind in ("inference_only", "packed"):
            quantize_binary_weights(net)
        paths = export_network(net, architecture, epoch_folder(out, epoch) / kind, name, epoch,
                               kind, formats if kind == "inference_only" else (), probe)
        if check:
            expected = net(nd.array(probe)).asnumpy()
            got = load_exported(paths["folder"])(nd.array(probe)).asnumpy()
            diff = float(np.abs(expected - got).max())
            if diff > 1e-5:
                raise RuntimeError(f"exported {kind} model differs from the network by {diff}")
        written[kind] = paths
    return written
