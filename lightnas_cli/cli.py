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
latency_app = typer.Typer(no_args_is_help=True,
                          help="Measured latency tables: one entry per searchable layer and "
                               "candidate block.")
app.add_typer(latency_app, name="latency")

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


class TrainInit(str, Enum):
    scratch = "scratch"
    search = "search"


@app.command()
@user_errors
def train(source: str = typer.Argument(..., help="A search run (name or folder), an "
                                                 "architecture JSON file, or a zoo model."),
          config: Optional[Path] = typer.Option(None, "-c", "--config",
                                                help="Training schedule (configs/train/*.yml)."),
          overrides: Optional[List[str]] = typer.Argument(
              None, help="Dotlist overrides, e.g. train.epochs=30 run.name=final"),
          epoch: Optional[str] = typer.Option(None, "--epoch",
                                              help="A run's epoch: a number, best (default) "
                                                   "or latest."),
          init: Optional[TrainInit] = typer.Option(None, "--init",
                                                   help="scratch (default) or search: start "
                                                        "from the search's weights."),
          root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Train the winner of a search (or a zoo model) to completion, as a run of its own."""
    from lightnas_cli import runner
    from lightnas_cli.search.train.source import source_status, train_config
    cfg = train_config(source, str(config) if config else None, overrides or [], epoch,
                       init.value if init else None, root)
    run = runner.start_run(cfg, status=source_status(cfg))
    status = run.read_status()
    accuracy = status.get("test_accuracy")
    shown = "" if accuracy is None else f"  test accuracy {accuracy:.4f}"
    _out.print(f"finished: {run.path}{shown}", markup=False)


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
           from_epoch: Optional[int] = typer.Option(
               None, "--from-epoch",
               help="Go on from this epoch's checkpoint; later epochs' files are moved to "
                    "<run>/superseded/from-epoch-NNNN/, not deleted."),
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs.")) -> None:
    """Continue a run from its last complete checkpoint (or --from-epoch N), or a sweep from
    its trials."""
    from lightnas_cli import runner, sweep as sweep_mod
    folder = sweep_mod.find_sweep(run, root)
    if folder is not None:
        if epochs is not None or overrides or from_epoch is not None:
            raise LightNASError("--epochs, --from-epoch and overrides apply to a run, not to a "
                                "sweep; resume "
                                "a trial (trainings/<sweep>/trial_<k>) to change it")
        _out.print(f"finished: {sweep_mod.resume_sweep(folder)}", markup=False)
        return
    result = runner.resume_search(run, epochs, root, overrides=overrides or [],
                                  from_epoch=from_epoch)
    _out.print(f"finished: {result.path}", markup=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def launch(command: List[str] = typer.Argument(..., metavar="-- search|resume|train ARGS...",
                                               help="The lightnas command every worker runs."),
           workers: int = typer.Option(..., "--workers", help="Number of workers."),
           servers: int = typer.Option(1, "--servers", help="Number of parameter servers."),
           hosts: Optional[Path] = typer.Option(None, "--hosts",
                                                help="Host file (one host a line): start the "
                                                     "roles there over ssh."),
           port: Optional[int] = typer.Option(None, "--port",
                                              help="Scheduler port (default: a free one; "
                                                   "9091 with --hosts).")) -> None:
    """Run a search, resume or train on several workers through MXNet's parameter server."""
    from lightnas_cli.launch.launcher import launch as start
    code = start(command, workers, servers, hosts, port)
    if code:
        raise typer.Exit(code)


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
           root: Path = typer.Option(Path("trainings"), "--root", help="Folder of runs."),
           sample: Optional[int] = typer.Option(
               None, "--sample", help="Export K architectures sampled from the search's "
                                      "distribution instead of the derived one, each in "
                                      "<out>/samples/seed-S/sample-KK/."),
           seed: int = typer.Option(0, "--seed", help="Seed of --sample.")) -> None:
    """Export the derived architecture of a checkpoint as symbol JSON + params."""
    from lightnas_cli import runner
    from lightnas_cli.export import DEFAULT_KINDS, KINDS
    kinds = {ExportKind.both: DEFAULT_KINDS, ExportKind.all: KINDS}.get(kind, (kind.value,))
    formats = () if export_format == ExportFormat.mxnet else (export_format.value,)
    written = runner.export_run(run, epoch, kinds, out, root, formats=formats, sample=sample,
                                seed=seed)
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
    for column in ("name", "kind", "method", "model", "dataset", "status", "epochs",
                   "best val acc", "test acc", "cost"):
        table.add_column(column, no_wrap=True)
    from lightnas_cli.errors import RunError
    for run in found:
        try:
            status = run.read_status()
            state = run.effective_status()
        except RunError as exc:  # one damaged run.json must not hide the other runs
            _err.print(f"warning: {exc}", markup=False, highlight=False, soft_wrap=True)
            table.add_row(run.name, "?", "?", "?", "?", "unreadable", "?", "-", "-", "-")
            continue
        accuracy = status.get("best_val_accuracy")
        test = status.get("test_accuracy")
        cost = status.get("cost")
        table.add_row(run.name, str(status.get("kind", "search")),
                      str(status.get("method", "?")), str(status.get("model", "?")),
                      str(status.get("dataset", "?")), state,
                      f"{status.get('epoch', 0)}/{status.get('epochs', '?')}",
                      "-" if accuracy is None else f"{accuracy:.4f}",
                      "-" if test is None else f"{test:.4f}",
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


def _progress_bar(description: str):
    """A transient progress bar on stderr; returns (context, update(done, total, label))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[label]}"), console=_err,
                        transient=True)
    task = progress.add_task(description, total=None, label="")

    def update(done: int, total: int, label: str) -> None:
        progress.update(task, completed=done, total=total, label=label)
    return progress, update


@latency_app.command("build")
@user_errors
def latency_build(config: Path = typer.Option(..., "-c", "--config", help="YAML config file."),
                  overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
                  device: str = typer.Option("cpu", "--device", help="cpu, cpu:N or gpu:N."),
                  batch: int = typer.Option(1, "--batch", min=1, help="Batch size timed."),
                  repeats: int = typer.Option(50, "--repeats", min=1,
                                              help="Timed runs per entry (the median is kept)."),
                  out: Optional[Path] = typer.Option(None, "--out",
                                                     help="Table file (default: the config's)."),
                  stat: str = typer.Option("median", "--stat",
                                           help="median, or min (robust on a busy machine)."),
                  rounds: int = typer.Option(3, "--rounds", min=1,
                                             help="Passes over all entries the repeats are "
                                                  "spread over.")
                  ) -> None:
    """Time every candidate of every searchable layer at its input shape; write the table."""
    from lightnas_cli.costs import latency_table as lt
    from lightnas_cli.devices import parse_contexts
    cfg, space = lt.space_for_config(str(config), overrides or [])
    ctx = parse_contexts([device])[0]
    progress, update = _progress_bar("timing blocks")
    with progress:
        table = lt.build_table(space, ctx, device, batch=batch, repeats=repeats,
                               statistic=stat, rounds=rounds, on_progress=update)
    path = lt.write_table(table, out or Path(space.default_table))
    extremes = lt.LatencyTable(table, str(path)).extremes()
    _out.print(f"wrote {path}: {sum(len(l['latency_ms']) for l in table['layers'])} candidate "
               f"entries in {len(table['layers'])} layers on {table['device_name']} "
               f"({table['threads']} threads); networks predicted "
               f"{extremes['fastest_ms']:.3f}-{extremes['slowest_ms']:.3f} ms", markup=False)


@latency_app.command("show")
@user_errors
def latency_show(table: Path = typer.Argument(..., help="Table file (JSON)."),
                 as_json: bool = typer.Option(False, "--json", help="Print the JSON.")) -> None:
    """Print a latency table: where it was measured, and ms per layer and candidate."""
    import json
    from lightnas_cli.costs.latency_table import LatencyTable
    loaded = LatencyTable.load(table)
    if as_json:
        typer.echo(json.dumps(loaded.data, indent=1))
        return
    for key, value in {**loaded.header(), **loaded.extremes()}.items():
        _out.print(f"{key}: {value}", markup=False)
    candidates = list(dict.fromkeys(c for _, row in loaded.layers for c in row))
    grid = Table(box=None, pad_edge=False)
    for column in ["layer", *candidates]:
        grid.add_column(column, no_wrap=True, justify="left" if column == "layer" else "right")
    for name, ms in loaded.fixed.items():
        grid.add_row(name, *[f"{ms:.4f}" if i == 0 else "" for i in range(len(candidates))])
    for name, row in loaded.layers:
        grid.add_row(name, *[f"{row[c]:.4f}" if c in row else "-" for c in candidates])
    (_out if _out.is_terminal else Console(width=250)).print(grid)


@latency_app.command("check")
@user_errors
def latency_check(config: Path = typer.Option(..., "-c", "--config", help="YAML config file."),
                  overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
                  table: Optional[Path] = typer.Option(None, "--table",
                                                       help="Table file (default: the config's)."),
                  samples: int = typer.Option(10, "--samples", min=1,
                                              help="Random architectures measured."),
                  seed: int = typer.Option(0, "--seed", help="Seed of the random architectures."),
                  device: str = typer.Option("cpu", "--device", help="cpu, cpu:N or gpu:N."),
                  repeats: int = typer.Option(50, "--repeats", min=1, help="Timed runs each."),
                  architecture: Optional[List[Path]] = typer.Option(
                      None, "--architecture", help="Also measure this architecture JSON (e.g. a "
                                                   "run's logs/architectures/epoch_N.json); "
                                                   "repeatable."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON only.")) -> None:
    """Measure random whole networks; print predicted vs measured latency and the error."""
    import json
    from lightnas_cli.costs import latency_table as lt
    from lightnas_cli.devices import parse_contexts
    cfg, space = lt.space_for_config(str(config), overrides or [])
    loaded = lt.LatencyTable.load(table or space.default_table)
    given = [(path.name, lt.architecture_choices(path, space)) for path in architecture or []]
    progress, update = _progress_bar("timing networks")
    with progress:
        result = lt.check_table(space, loaded, parse_contexts([device])[0], samples, seed,
                                repeats=repeats, architectures=given, on_progress=update)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    grid = Table(box=None, pad_edge=False)
    for column in ("#", "kind", "predicted ms", "measured ms", "error %"):
        grid.add_column(column, justify="right")
    for index, row in enumerate(result["rows"], start=1):
        grid.add_row(str(index), row["kind"], f"{row['predicted_ms']:.4f}",
                     f"{row['measured_ms']:.4f}", f"{row['error_pct']:+.1f}")
    _out.print(grid)
    _out.print(f"median |error| {result['median_abs_error_pct']:.1f}%, worst "
               f"{result['worst_abs_error_pct']:.1f}% over {samples} random architectures "
               f"({result['table']})", markup=False)
    _out.print(json.dumps({k: v for k, v in result.items() if k != "rows"}), markup=False,
               highlight=False)


def main() -> None:
    from lightnas_cli.launch.launcher import run_entry
    install_fault_hooks()
    run_entry(app)


if __name__ == "__main__":
    main()
