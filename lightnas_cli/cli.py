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
def resume(run: str = typer.Argument(..., help="Run name (under trainings/) or run folder."),
           overrides: Optional[List[str]] = typer.Argument(
               None, help="Training overrides, e.g. train.lr=0.001 after a divergence "
                          "(not run/data/model/method/seed)."),
           epochs: Optional[int] = typer.Option(None, "--epochs",
                                                help="New total number of epochs."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Continue a run from its last complete checkpoint."""
    from lightnas_cli import runner
    result = runner.resume_search(run, epochs, root, overrides=overrides or [])
    _out.print(f"finished: {result.path}", markup=False)


class ExportKind(str, Enum):
    inference_only = "inference_only"
    trainable = "trainable"
    both = "both"


@app.command()
@user_errors
def export(run: str = typer.Argument(..., help="Run name (under trainings/) or run folder."),
           epoch: str = typer.Option("latest", "--epoch", help="Epoch number, latest or best."),
           kind: ExportKind = typer.Option(ExportKind.both, "--kind", help="What to export."),
           out: Optional[Path] = typer.Option(None, "--out",
                                              help="Folder (default: the run's exported_models/)."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Export the derived architecture of a checkpoint as symbol JSON + params."""
    from lightnas_cli import runner
    kinds = ("inference_only", "trainable") if kind == ExportKind.both else (kind.value,)
    written = runner.export_run(run, epoch, kinds, out, root)
    for name, paths in written.items():
        _out.print(f"{name}: {paths['folder']}  ({paths['symbol'].name}, "
                   f"{paths['params'].name})", markup=False)


@app.command()
@user_errors
def runs(root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """List runs: name, method, model, data set, status, epochs, best accuracy, cost."""
    from lightnas_cli.runs import list_runs
    found = list_runs(root)
    if not found:
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
                                                      "e.g. --cost ops --cost flops."),
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
