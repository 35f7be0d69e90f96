"""The `lightnas` command line. Thin: parse, call the runner, print.

User errors (`LightNASError`) print one message and exit with code 2; bugs keep their traceback.
"""
from __future__ import annotations

import os
import sys

# MXNet reads OMP_NUM_THREADS when it is imported: set it before anything imports mxnet.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import functools  # noqa: E402
import threading  # noqa: E402
from enum import Enum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lightnas_cli.errors import LightNASError  # noqa: E402
from lightnas_cli.files import (describe_os_error, is_disk_full,  # noqa: E402
                                is_environment_error)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hardware-aware neural architecture search on MXNet/Gluon.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")
data_app = typer.Typer(no_args_is_help=True,
                       help="Check a config's data; pack images into RecordIO.")
app.add_typer(data_app, name="data")

_err = Console(stderr=True)
_out = Console(soft_wrap=True)


def _check_python() -> None:
    if sys.version_info[:2] != (3, 11):
        _err.print(f"error: LightNAS needs Python 3.11 (mxnet 1.9.1 does not run on "
                   f"{sys.version.split()[0]}); run `bash shell_scripts/setup.sh`, which creates "
                   f"a Python 3.11 virtual environment in .venv", markup=False)
        raise typer.Exit(2)


def _print_error(message: str) -> None:
    """One `error:` line, whatever the message holds."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    _err.print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


def user_errors(func):
    """Print LightNASError - and an OSError the environment caused (disk full, permission
    denied, read-only file system, name too long) - as one `error: ...` line and exit 2;
    Ctrl-C exits 130. Anything else is a bug and keeps its traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _check_python()
        try:
            return func(*args, **kwargs)
        except LightNASError as exc:
            _print_error(str(exc))
            raise typer.Exit(2)
        except OSError as exc:
            if not is_environment_error(exc):
                raise
            _print_error(f"{describe_os_error(exc)}; check the path, its permissions and the "
                         f"free space, then run the command again")
            raise typer.Exit(2)
        except KeyboardInterrupt:
            raise typer.Exit(130)
    return wrapper


@app.command()
@user_errors
def search(config: Path = typer.Option(..., "-c", "--config", help="YAML config file."),
           overrides: Optional[List[str]] = typer.Argument(
               None, help="Dotlist overrides, e.g. train.epochs=3 run.name=try1")) -> None:
    """Start a new search run from a config file (plus key=value overrides)."""
    from lightnas_cli.config import load_config
    load_config(str(config), overrides or [])  # config errors at once, before MXNet loads
    from lightnas_cli import runner
    run = runner.start_search(str(config), overrides or [])
    _out.print(f"finished: {run.path}", markup=False)


@app.command()
@user_errors
def sweep(config: Path = typer.Option(..., "-c", "--config",
                                      help="Search config with a `sweep:` section."),
          overrides: Optional[List[str]] = typer.Argument(
              None, help="Dotlist overrides of the search config, e.g. train.epochs=3")) -> None:
    """Run a sweep: trials of a search over the `sweep:` section's space."""
    from lightnas_cli import sweep as sweep_mod
    folder = sweep_mod.start_sweep(str(config), overrides or [])
    _out.print(f"finished: {folder}  (lightnas report {folder})", markup=False)


@app.command()
@user_errors
def resume(run: str = typer.Argument(..., help="Run or sweep name (under trainings/) or folder."),
           overrides: Optional[List[str]] = typer.Argument(
               None, help="Training overrides, e.g. train.lr=0.001 after a divergence "
                          "(not run/data/model/method/seed)."),
           epochs: Optional[int] = typer.Option(None, "--epochs",
                                                help="New total number of epochs."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Continue a run from its last complete checkpoint, or a sweep from its trials."""
    from lightnas_cli import runner, sweep as sweep_mod
    folder = sweep_mod.find_sweep(run, root)
    if folder is not None:
        if epochs is not None or overrides:
            raise LightNASError("--epochs and overrides apply to a run, not to a sweep; resume "
                                "a trial (trainings/<sweep>/trial_<k>) to change it")
        _out.print(f"finished: {sweep_mod.resume_sweep(folder)}", markup=False)
        return
    result = runner.resume_search(run, epochs, root, overrides=overrides or [])
    _out.print(f"finished: {result.path}", markup=False)


@app.command()
@user_errors
def report(run: str = typer.Argument(..., help="Run or sweep name (under trainings/) or folder."),
           out: Optional[Path] = typer.Option(None, "--out",
                                              help="Folder (default: <run or sweep>/report/)."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """PNG plots and one self-contained HTML page: a sweep's Pareto fronts, or a run's curves."""
    from lightnas_cli import report as report_mod
    _out.print(f"report: {report_mod.report(run, out, root)}", markup=False)


class ExportKind(str, Enum):
    inference_only = "inference_only"
    trainable = "trainable"
    packed = "packed"
    both = "both"
    all = "all"


class ExportFormat(str, Enum):
    mxnet = "mxnet"
    onnx = "onnx"


@app.command()
@user_errors
def export(run: str = typer.Argument(..., help="Run name (under trainings/) or run folder."),
           epoch: str = typer.Option("latest", "--epoch", help="Epoch number, latest or best."),
           kind: ExportKind = typer.Option(ExportKind.both, "--kind",
                                           help="inference_only (binary weights quantized), "
                                                "trainable (latent weights), packed (binary "
                                                "weights 1 bit each), both (the first two) or "
                                                "all."),
           export_format: ExportFormat = typer.Option(
               ExportFormat.mxnet, "--format",
               help="onnx also writes <name>-NNNN.onnx beside the inference_only files, "
                    "checked with onnx.checker and ONNX's reference evaluator."),
           out: Optional[Path] = typer.Option(None, "--out",
                                              help="Folder (default: the run's exported_models/)."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Export the derived architecture of a checkpoint as symbol JSON + params."""
    from lightnas_cli import runner
    from lightnas_cli.export import DEFAULT_KINDS, KINDS
    kinds = {ExportKind.both: DEFAULT_KINDS, ExportKind.all: KINDS}.get(kind, (kind.value,))
    formats = () if export_format == ExportFormat.mxnet else (export_format.value,)
    written = runner.export_run(run, epoch, kinds, out, root, formats=formats)
    for name, paths in written.items():
        files = ", ".join(path.name for key, path in paths.items()
                          if key not in ("folder", "architecture"))
        _out.print(f"{name}: {paths['folder']}  ({files})", markup=False)


@app.command()
@user_errors
def runs(root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """List runs: name, method, model, data set, status, epochs, best accuracy, cost."""
    from lightnas_cli.runs import list_runs
    from lightnas_cli.sweep import list_sweeps, sweep_row
    found = list_runs(root)
    sweeps = list_sweeps(root)
    if not found and not sweeps:
        _out.print(f"no runs under {root}", markup=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "method", "model", "dataset", "status", "epochs", "best val acc",
                   "cost"):
        table.add_column(column, no_wrap=True)
    from lightnas_cli.errors import RunError
    for run in found:
        try:
            status = run.read_status()
            state = run.effective_status()
        except RunError as exc:  # one damaged run.json must not hide the other runs
            _err.print(f"warning: {exc}", markup=False, highlight=False, soft_wrap=True)
            table.add_row(run.name, "?", "?", "?", "unreadable", "?", "-", "-")
            continue
        accuracy = status.get("best_val_accuracy")
        cost = status.get("cost")
        table.add_row(run.name, str(status.get("method", "?")), str(status.get("model", "?")),
                      str(status.get("dataset", "?")), state,
                      f"{status.get('epoch', 0)}/{status.get('epochs', '?')}",
                      "-" if accuracy is None else f"{accuracy:.4f}",
                      "-" if cost is None else f"{cost:.4g} {status.get('cost_name', '')}")
    for folder in sweeps:
        table.add_row(*sweep_row(folder))
    # Full rows when piped (no terminal width to fit): scripts and logs read every column.
    console = _out if _out.is_terminal else Console(width=250)
    console.print(table)


@config_app.command("show")
@user_errors
def config_show(config: Path = typer.Option(..., "-c", "--config", help="YAML config file."),
                overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides")) -> None:
    """Print the resolved config (file + schema defaults + overrides)."""
    from lightnas_cli.config import load_config, to_yaml
    _out.print(to_yaml(load_config(str(config), overrides or [])), markup=False, end="")


@data_app.command("check")
@user_errors
def data_check(config: Path = typer.Option(..., "-c", "--config", help="YAML config file."),
               overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
               max_decode: int = typer.Option(1000, "--max-decode",
                                              help="Images decoded per split (0 = all)."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Read the configured data without starting a run: counts per split and class, shape,
    value range, decoding speed, and the first problems found (exit 2 if any)."""
    import json

    from lightnas_cli.config import load_config
    from lightnas_cli.data.check import check_data
    from lightnas_cli.errors import DataError
    if max_decode < 0:
        raise DataError("--max-decode must be >= 0 (0 decodes every image)")
    report = check_data(load_config(str(config), overrides or []), max_decode or None)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in report.lines():
            _out.print(line, markup=False, highlight=False)
    if report.problem_count:
        raise DataError(report.summary())


@data_app.command("pack")
@user_errors
def data_pack(folder: Path = typer.Argument(..., help="root/<class>/*.jpg|png, or root/train|val|"
                                                      "test/<class>/..."),
              out: Path = typer.Argument(..., help="Output prefix: OUT.rec/.idx/.lst "
                                                   "(OUT_train.rec, ... for train/val/test)."),
              resize: Optional[int] = typer.Option(None, "--resize",
                                                   help="Scale the shorter side to this and "
                                                        "re-encode as JPEG (default: keep the "
                                                        "files' bytes)."),
              quality: int = typer.Option(95, "--quality", help="JPEG quality with --resize."),
              force: bool = typer.Option(False, "--force", help="Replace existing outputs.")) -> None:
    """Pack an image folder into RecordIO files for data.name=recordio."""
    from lightnas_cli.data.pack import pack_folder
    result = pack_folder(folder, out, resize=resize, quality=quality, force=force)
    for split in result.splits:
        _out.print(f"{split.split}: {split.images:,} images, {split.bytes:,} bytes -> {split.rec} "
                   f"(+ {split.idx.name}, {split.lst.name})", markup=False, highlight=False)
    _out.print(f"classes (label = position): {', '.join(result.classes)}", markup=False,
               highlight=False)


@app.command("summary")
@user_errors
def summary_command(
        model: str = typer.Argument(..., help="Zoo name (meliusnet22, resnet_e18), custom string "
                                              "(meliusnet_custom:DTSI) or run:<name>."),
        input_shape: Optional[str] = typer.Option(None, "--input-shape",
                                                  help="C,H,W (default 3,224,224; a run uses "
                                                       "its data's shape)."),
        classes: Optional[int] = typer.Option(None, "--classes",
                                              help="Output classes (default 1000)."),
        options: Optional[List[str]] = typer.Option(None, "-o", "--option",
                                                    help="Model option key=value, e.g. "
                                                         "stem=thumbnail (repeatable)."),
        cost: Optional[List[str]] = typer.Option(None, "--cost",
                                                 help="Also show this registered cost model "
                                                      "per layer and in total (repeatable), "
                                                      "with options as name:key=value,..., "
                                                      "e.g. --cost ops --cost systolic:s1=32."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Per-layer shapes, 1-bit/32-bit parameters, binary/float MACs, memory, and totals."""
    from lightnas_cli import summary as summary_mod
    result = summary_mod.summarize_model(model, summary_mod.parse_input_shape(input_shape),
                                         classes, summary_mod.parse_options(options), root,
                                         cost_names=cost or ())
    if as_json:
        typer.echo(result.to_json())
    else:
        summary_mod.render(result, _out)


def _quiet_file_system_finalizers(unraisable) -> None:
    """Buffered writers (mxboard's event file) fail again when they are collected at exit
    after a full disk was reported: say nothing more; anything else as Python would."""
    exc = unraisable.exc_value
    if exc is not None and (is_environment_error(exc) or is_disk_full(exc)):
        return
    sys.__unraisablehook__(unraisable)


def _file_system_errors_in_threads(args) -> None:
    """A background writer (mxboard's event thread) meeting a full or read-only disk: one
    warning line instead of a thread traceback; the run itself reports the fault."""
    exc = args.exc_value
    if isinstance(exc, OSError) and (is_environment_error(exc) or is_disk_full(exc)):
        _err.print(f"warning: a background writer stopped: {describe_os_error(exc)}",
                   markup=False, highlight=False, soft_wrap=True)
        return
    threading.__excepthook__(args)


def install_fault_hooks() -> None:
    """Process-wide: late file-system failures of buffered writers add no traceback."""
    sys.unraisablehook = _quiet_file_system_finalizers
    threading.excepthook = _file_system_errors_in_threads


def main() -> None:
    install_fault_hooks()
    app()


if __name__ == "__main__":
    main()
