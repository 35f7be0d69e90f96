"""The one epoch loop every search method uses, and the start / resume / export flows.

Per epoch: re-seed from (seed, epoch), train, evaluate, derive, log, draw, (export), checkpoint.
The checkpoint carries the metrics history, so a resumed run rewrites `metrics.jsonl` to one
line per completed epoch and continues exactly as the uninterrupted run would have.

A command that fails changes nothing: `search` checks everything a run needs - the config, the
name and run root, the devices, the data, and the method's own checks (by building the method
before the folder exists) - and only then creates the run folder; `resume` holds the run's lock,
rebuilds the method and finds a checkpoint that fits it before it writes anything; `export`
reads the run and writes only the exported model. A full disk or another file-system fault
during a run stops it with a clear message, status `interrupted`, its temporaries removed and
its checkpoints intact; a loss that becomes NaN or infinite stops it as `failed`, with the
checkpoints of the good epochs kept for a resume with a lower learning rate.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import mxnet as mx
from omegaconf import DictConfig

from lightnas_cli import checkpoint, config as config_mod, data as data_mod, interrupts, viz
from lightnas_cli.devices import parse_contexts
from lightnas_cli.errors import (CheckpointError, ConfigError, DiskFullError, DivergedError,
                                 LightNASError, RunError)
from lightnas_cli.export import export_architecture
from lightnas_cli.files import describe_os_error, is_disk_full, is_environment_error
from lightnas_cli.launch import world as launch_world
from lightnas_cli.logging import RunLogger
from lightnas_cli.runs import RunDir, check_can_create, versions
from lightnas_cli.search.base import get_method
from lightnas_cli.seeding import seed_everything

#: Config keys a resume may not change: they fix what the checkpoints hold and mean.
FIXED_ON_RESUME = ("method", "seed", "run", "data", "model")
#: Exceptions a method's `load_state` raises on arrays or JSON of another shape or model.
_STATE_MISMATCH = (KeyError, IndexError, TypeError, ValueError, AssertionError,
                   mx.base.MXNetError)


@dataclass
class SpecOnly:
    """Data stand-in for export: shapes and classes, no loaders (reads no files)."""

    spec: object
    train: None = None
    val: None = None
    test: None = None


def run_name(cfg: DictConfig) -> str:
    return cfg.run.name or RunDir.default_name(cfg.model.name, cfg.data.name)


def create_method(cfg: DictConfig, data, logger):
    return get_method(cfg.method)(cfg, data, parse_contexts(list(cfg.train.contexts)), logger)


def _quiet_logger(logger_factory) -> RunLogger:
    """Console messages only: for work before a run folder exists or in read-only commands."""
    return logger_factory(Path(os.devnull), tensorboard=False)


def _build_method(cfg: DictConfig, logger_factory) -> tuple[Any, RunLogger]:
    """The configured method on its data and devices, with a quiet logger (the run's own
    reaches it in `_run_loop`); every start, resume and launched worker builds it alike."""
    contexts = parse_contexts(list(cfg.train.contexts))
    method_class = get_method(cfg.method)
    data = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)
    seed_everything(cfg.seed, "setup")
    quiet = _quiet_logger(logger_factory)
    return method_class(cfg, data, contexts, quiet), quiet


def _writes() -> bool:
    """Whether this process writes the run folder: always, except in the workers of
    `lightnas launch` other than rank 0 (they compute the same epochs, silently)."""
    return launch_world.current().writes


def start_search(config_path: str | None, overrides: Sequence[str] = (),
                 logger_factory=RunLogger, autosave: bool = True,
                 status: dict | None = None) -> RunDir:
    """Validate everything, build the method, then create the run folder and search. Nothing
    is created on bad input (config, name, run root, devices, data, the method's checks).

    `autosave` keeps a copy of an overridden config in configs/autosaved/ (a sweep's trials
    record theirs in their own folder instead); `status` adds fields to run.json (a trial's
    sweep, number and overrides)."""
    cfg = config_mod.load_config(config_path, overrides)
    return start_run(cfg, logger_factory, autosave=autosave and bool(overrides), status=status)


def start_run(cfg: DictConfig, logger_factory=RunLogger, autosave: bool = False,
              status: dict | None = None) -> RunDir:
    """Run a loaded, validated config (a search, or a `lightnas train` run) in a new run
    folder: the method is built before the folder exists, so bad input creates nothing."""
    world = launch_world.connect(cfg.train.kvstore)
    name = world.broadcast_json("run/name", run_name(cfg))  # rank 0's, if launched
    root = Path(cfg.run.root)
    if world.writes:
        check_can_create(root, name)
    method, quiet = _build_method(cfg, logger_factory)
    cfg.run.name = name
    if not world.writes:  # another launched worker: rank 0 writes the folder
        _run_loop(RunDir(root / name), cfg, method, [], 1, logger_factory)
        return RunDir(root / name)
    run = RunDir.create(root, name)
    with run.lock():
        try:
            config_mod.save_config(cfg, run.config_file)
            run.update_status(status="running", pid=os.getpid(), method=cfg.method,
                              model=cfg.model.name, dataset=cfg.data.name,
                              epochs=int(cfg.train.epochs), epoch=0, versions=versions(),
                              created=time.strftime("%Y-%m-%dT%H:%M:%S"), **(status or {}))
        except OSError as exc:
            shutil.rmtree(run.path, ignore_errors=True)
            if not is_environment_error(exc):
                raise
            raise (DiskFullError if is_disk_full(exc) else RunError)(
                f"cannot write the new run {name!r} ({describe_os_error(exc)}); nothing was "
                f"kept - free space or choose a writable run.root") from None
        if autosave:
            _autosave(cfg, name, quiet)
        _run_loop(run, cfg, method, [], 1, logger_factory)
    return run


def _autosave(cfg: DictConfig, name: str, logger) -> None:
    """Keep a copy of the resolved config under configs/autosaved/, never over another."""
    wanted = Path("configs") / "autosaved" / f"{name}.yml"
    try:
        written = config_mod.save_new_config(cfg, wanted)
    except OSError as exc:
        logger.warn(f"could not autosave the config to {wanted} ({describe_os_error(exc)}); "
                    f"the run keeps its own copy in config.yaml")
        return
    if written != wanted:
        logger.info(f"config autosaved as {written} ({wanted.name} belongs to another run)")


def _run_config(run: RunDir, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's saved config (plus overrides), with errors that name the run."""
    try:
        empty = run.config_file.stat().st_size == 0
    except FileNotFoundError:
        raise RunError(f"run {run.name!r} has no config.yaml (at {run.config_file}); it cannot "
                       f"be used - start a new run with `lightnas search`") from None
    if empty:
        raise RunError(f"{run.config_file} is empty; restore the run's config (runs started "
                       f"with overrides have a copy in configs/autosaved/{run.name}.yml)")
    return config_mod.load_config(run.config_file, overrides)


def _state_check(method) -> Callable[[checkpoint.Checkpoint], None]:
    """A `checkpoint.load` check: the checkpoint holds a method state and a history, and an
    array of the right shape for every array of `method` (refusing another model's)."""
    expected = {name: tuple(array.shape) for name, array in method.state()[0].items()}

    def check(ckpt: checkpoint.Checkpoint) -> None:
        where = ckpt.path / checkpoint.STATE
        if not isinstance(ckpt.state.get("method"), dict):
            raise CheckpointError(f"{where} holds no method state")
        history = ckpt.state.get("history", [])
        if not isinstance(history, list) or not all(
                isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in history):
            raise CheckpointError(f"{where} has a damaged metrics history")
        for name, shape in expected.items():
            if name not in ckpt.arrays:
                raise CheckpointError(f"{ckpt.path.name} has no array {name!r}: it was written "
                                      f"for another model or search space")
            if tuple(ckpt.arrays[name].shape) != shape:
                raise CheckpointError(f"{ckpt.path.name} holds {name!r} of shape "
                                      f"{tuple(ckpt.arrays[name].shape)}, but this run's model "
                                      f"needs {shape}: it was written for another model")
    return check


def _load_method_state(method, ckpt: checkpoint.Checkpoint) -> None:
    try:
        method.load_state(ckpt.arrays, ckpt.state["method"])
    except LightNASError as exc:
        raise CheckpointError(f"{ckpt.path} does not fit this run ({exc})") from None
    except _STATE_MISMATCH as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{ckpt.path} does not fit this run's model "
                              f"({type(exc).__name__}: {first}); it was written for another "
                              f"model or is damaged") from None


def resume_search(reference: str, epochs: int | None = None, root: Path = Path("trainings"),
                  logger_factory=RunLogger, overrides: Sequence[str] = (),
                  from_epoch: int | None = None) -> RunDir:
    """Continue a run from its newest usable checkpoint (falling back past corrupt ones), or
    from epoch `from_epoch`'s: what the run wrote for later epochs is then moved to
    `superseded/from-epoch-NNNN/` (RunDir.set_aside_after), never deleted.

    `overrides` may change training keys (a lower `train.lr` after a divergence, say) but
    not those in FIXED_ON_RESUME. Nothing is written until the run's lock is held, its
    config, data, method and a checkpoint that fits the method have all been checked."""
    run = RunDir.open(reference, root)
    status = run.read_status()
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        if key.split(".")[0] in FIXED_ON_RESUME:
            raise ConfigError(f"resume cannot change {key!r}: {', '.join(FIXED_ON_RESUME)} "
                              f"fix what the checkpoints hold; start a new run with "
                              f"`lightnas search -c {run.config_file} {item} run.name=NEW_NAME`")
    cfg = _run_config(run, overrides)
    world = launch_world.connect(cfg.train.kvstore)
    done = int(status.get("epoch", 0)) if from_epoch is None else from_epoch
    if from_epoch is not None and from_epoch < 1:
        raise ConfigError(f"--from-epoch {from_epoch}: epochs count from 1; the run's "
                          f"checkpoints are the epoch-NNNN folders in {run.checkpoints}")
    if epochs is not None:
        if epochs < max(done, 1):
            raise ConfigError(f"--epochs {epochs} is below the {done} epoch(s) run "
                              f"{run.name!r} has already done; give --epochs {max(done, 1)} "
                              f"or more")
        cfg.train.epochs = epochs
    if not checkpoint.epochs_present(run.checkpoints):
        raise CheckpointError(f"run {run.name!r} has no checkpoint yet (it stopped during its "
                              f"first epoch); start it again with `lightnas search -c "
                              f"{run.config_file} run.name=NEW_NAME`")
    if not world.writes:  # another launched worker: rank 0 holds the lock and writes
        _follow_resume(run, cfg, logger_factory)
        return run
    with run.lock():
        method, quiet = _build_method(cfg, logger_factory)
        ckpt = checkpoint.load(run.checkpoints, from_epoch, warn=quiet.warn,
                               check=_state_check(method))
        world.broadcast_json("resume/epoch", ckpt.epoch)  # the other workers load this one
        if ckpt.epoch > cfg.train.epochs:
            raise ConfigError(f"run {run.name!r} resumes from epoch {ckpt.epoch}, beyond "
                              f"train.epochs={cfg.train.epochs}; give --epochs {ckpt.epoch} "
                              f"or more")
        _load_method_state(method, ckpt)
        history = [r for r in ckpt.state.get("history", []) if r["epoch"] <= ckpt.epoch]
        # Everything is checked: from here on, the run changes.
        try:
            run.remove_temporaries()
            checkpoint.set_aside(run.checkpoints, ckpt, warn=quiet.warn)
            if from_epoch is not None:
                aside = run.set_aside_after(ckpt.epoch)
                checkpoint.point_latest(run.checkpoints, ckpt.epoch)
                if aside is not None:
                    quiet.warn(f"moved what the run wrote after epoch {ckpt.epoch} "
                               f"(checkpoints, exports, architecture files, a copy of the "
                               f"metrics) to {aside}")
            if epochs is not None or overrides:
                config_mod.save_config(cfg, run.config_file)
            run.rewrite_metrics(history)
            run.update_status(status="running", pid=os.getpid(), epochs=int(cfg.train.epochs),
                              epoch=ckpt.epoch,
                              **({} if from_epoch is None else
                                 {"final_architecture": None, "exported": None}))
        except OSError as exc:
            _stopped_by_file_system(run, exc, ckpt.epoch)
        quiet.info(f"resuming {run.name} from epoch {ckpt.epoch} ({ckpt.path.name}); "
                   f"{cfg.train.epochs - ckpt.epoch} epoch(s) to go")
        _run_loop(run, cfg, method, history, ckpt.epoch + 1, logger_factory)
    return run


def _follow_resume(run: RunDir, cfg: DictConfig, logger_factory) -> None:
    """`resume` in a launched worker other than rank 0: the same method, loaded from the
    checkpoint rank 0 chose, then the same epochs; nothing is written."""
    method, _ = _build_method(cfg, logger_factory)
    epoch = launch_world.current().broadcast_json("resume/epoch", None)
    ckpt = checkpoint.load(run.checkpoints, epoch, check=_state_check(method))
    _load_method_state(method, ckpt)
    history = [r for r in ckpt.state.get("history", []) if r["epoch"] <= ckpt.epoch]
    _run_loop(run, cfg, method, history, ckpt.epoch + 1, logger_factory)


def _best(history: list[dict]) -> dict | None:
    scored = [r for r in history if "val_accuracy" in r]
    if scored:
        return max(scored, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    # Tasks without accuracy (e.g. reconstruction): the lowest validation loss is best.
    losses = [r for r in history if "val_loss" in r]
    return min(losses, key=lambda r: (r["val_loss"], r["epoch"])) if losses else None


def _tag(key: str) -> str:
    for prefix in ("train_", "val_", "test_"):
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return "search/" + key


def _run_loop(run: RunDir, cfg: DictConfig, method, history: list[dict], start: int,
              logger_factory) -> None:
    """Epochs `start`..train.epochs, then the final export; the caller holds the run's lock.
    The method gets the run's logger here (it was built with a quiet one)."""
    logger = None
    try:
        with interrupts.stop_on_signals(), \
                (logger_factory(run.logs) if _writes() else _quiet_logger(logger_factory)) \
                as logger:
            method.logger = logger
            logger.text("run/config", _code_block(config_mod.to_yaml(cfg)), 0)
            for epoch in range(start, cfg.train.epochs + 1):
                try:
                    history.append(_one_epoch(run, cfg, method, logger, epoch, history))
                except DivergedError as exc:
                    raise DivergedError(_diverged_message(run, cfg, epoch, exc)) from None
            _finish(run, cfg, method, logger, history)
            launch_world.announce_state(method)
    except KeyboardInterrupt:
        _mark(run, "interrupted")
        (logger or _quiet_logger(logger_factory)).warn(
            f"interrupted; continue with `lightnas resume {run.name}`")
        raise
    except DivergedError:
        _mark(run, "failed")
        raise
    except Exception as exc:
        if _writes() and (is_environment_error(exc) or is_disk_full(exc)):
            _stopped_by_file_system(run, exc, history[-1]["epoch"] if history else start - 1)
        _mark(run, "failed")
        raise


def _mark(run: RunDir, status: str) -> bool:
    """Record how a run stopped, if the disk still lets us (a `running` run whose process is
    gone shows as interrupted anyway); returns whether it was recorded."""
    if not _writes():
        return False
    try:
        run.update_status(status=status)
    except (OSError, RunError):
        return False
    return True


def _stopped_by_file_system(run: RunDir, exc: BaseException, done: int) -> None:
    """A full disk or another file-system fault stopped the run: mark it interrupted, remove
    the temporaries it left (so they do not keep the disk full), raise a user error."""
    try:
        run.remove_temporaries()
    except OSError:
        pass
    was_running = _status_of(run) == "running"
    if not was_running:
        state = "its status is unchanged"
    elif _mark(run, "interrupted"):
        state = "status interrupted"
    else:
        state = "`lightnas runs` shows it as interrupted"
    where = f"run {run.name!r} ({run.path})"
    if is_disk_full(exc):
        raise DiskFullError(f"the disk is full: no space left while writing {where}. It "
                            f"stopped after epoch {done}, with its checkpoints intact ({state}); "
                            f"free some space, then continue with "
                            f"`lightnas resume {run.name}`") from None
    detail = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
    raise RunError(f"cannot write {where}: {detail}. It stopped after epoch {done}, with its "
                   f"checkpoints intact ({state}); fix the folder's permissions, then "
                   f"continue with `lightnas resume {run.name}`") from None


def _status_of(run: RunDir) -> str | None:
    try:
        return run.read_status().get("status")
    except (OSError, RunError):
        return None


def _diverged_message(run: RunDir, cfg: DictConfig, epoch: int, exc: DivergedError) -> str:
    kept = checkpoint.complete_epochs(run.checkpoints)
    lower = f"{float(cfg.train.lr) / 10:g}"
    if kept:
        return (f"run {run.name!r} stopped in epoch {epoch}: {exc} (status failed). The "
                f"checkpoints up to epoch {max(kept)} are kept; continue from there with a lower "
                f"learning rate: `lightnas resume {run.name} train.lr={lower}`")
    return (f"run {run.name!r} stopped in epoch {epoch}: {exc} (status failed), before any "
            f"checkpoint; start again with a lower learning rate, e.g. train.lr={lower} and "
            f"another run.name")


def _one_epoch(run: RunDir, cfg: DictConfig, method, logger: RunLogger, epoch: int,
               history: list[dict]) -> dict:
    seed_everything(cfg.seed, "epoch", epoch)
    started = time.time()
    record = {"epoch": epoch}
    record.update(method.train_epoch(epoch))
    record.update(method.evaluate("val"))
    _check_finite(record)
    architecture = method.derive()
    record["cost"] = architecture.costs.get("cost")
    record["seconds"] = round(time.time() - started, 3)
    interrupts.check()  # a stop whose KeyboardInterrupt a finalizer swallowed: no checkpoint
    if not _writes():  # a launched worker other than rank 0: same epoch, no files
        return record
    # Logs and graphs are re-made identically if this epoch is re-run after a crash.
    logger.scalars({_tag(k): v for k, v in record.items() if k not in ("epoch", "seconds")}, epoch)
    logger.scalars({f"cost/{k}": v for k, v in architecture.costs.items()}, epoch)
    _log_probabilities(logger, architecture, epoch)
    drawn = viz.write_architecture(architecture, run.architectures / f"epoch_{epoch}")
    if drawn["png"] is not None:
        logger.image_file("architecture/graph", drawn["png"], epoch)
    logger.text("architecture/decisions", _code_block(viz.architecture_table(architecture)),
                epoch)
    best = _best(history + [record])
    if cfg.export.every_epoch:
        export_architecture(method, architecture, run.exported, export_name(cfg), epoch)
    arrays, method_state = method.state()
    checkpoint.save(run.checkpoints, epoch, arrays,
                    {"method": method_state, "history": history + [record], "seed": cfg.seed},
                    keep=cfg.checkpoint.keep, protect=(best["epoch"],) if best else ())
    run.append_metrics(record)
    run.update_status(epoch=epoch, best_epoch=best["epoch"] if best else None,
                      best_val_accuracy=best.get("val_accuracy") if best else None,
                      cost=record["cost"], cost_name=architecture.costs.get("cost_name"))
    hidden = ("epoch", "seconds") + tuple(method.console_hidden)
    shown = {k: v for k, v in record.items() if k not in hidden}
    logger.epoch_summary(epoch, cfg.train.epochs, shown, record["seconds"])
    logger.flush()
    return record


def _code_block(text: str) -> str:
    """Text TensorBoard's markdown renderer shows verbatim (tables, YAML)."""
    return "```\n" + text.rstrip("\n") + "\n```"


def _check_finite(record: dict) -> None:
    """Refuse an epoch whose losses are NaN or infinite before anything of it is saved."""
    for key, value in record.items():
        if key.endswith("loss") and isinstance(value, float) and not math.isfinite(value):
            raise DivergedError(f"the {key.replace('_', ' ')} became {value}")


def _log_probabilities(logger: RunLogger, architecture, epoch: int) -> None:
    """The search's per-decision probabilities as an image (decisions x options); decisions
    may have different numbers of options (shorter rows are padded)."""
    decisions = [d for d in architecture.decisions if d.probabilities]
    if decisions:
        logger.heatmap("search/probabilities", [d.probabilities for d in decisions], epoch,
                       row_labels=[f"{d.name}:{d.choice}" for d in decisions],
                       option_labels=[[str(o) for o in d.options] for d in decisions])


def export_name(cfg: DictConfig) -> str:
    return cfg.export.name or cfg.model.name


def _finish(run: RunDir, cfg: DictConfig, method, logger: RunLogger, history: list[dict]) -> None:
    last = history[-1]["epoch"] if history else int(run.read_status().get("epoch", 0))
    if not history:
        logger.info("nothing to do: the run has already completed all its epochs")
    architecture = method.derive()
    test = method.evaluate("test") if getattr(method.data, "test", None) is not None else {}
    if not _writes():
        return
    written = export_architecture(method, architecture, run.exported, export_name(cfg), last)
    logger.scalars({_tag(k): v for k, v in test.items()}, last)
    logger.flush()
    # Paths inside the run folder are stored relative to it, so a moved run stays consistent.
    run.update_status(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      final_architecture=str((run.architectures / f"epoch_{last}.json")
                                             .relative_to(run.path)),
                      exported=str(written["inference_only"]["folder"].parent
                                   .relative_to(run.path)), **test)
    logger.info(f"run folder:      {run.path}")
    logger.info(f"exported model:  {written['inference_only']['folder']}  (and trainable/)")
    logger.info(f"graph:           {run.architectures / f'epoch_{last}'}.png / .dot / .txt")
    logger.info(f"tensorboard:     {run.logs}  (bash shell_scripts/run_tensorboard.sh)")


def restore_method(run: RunDir, logger, epoch: int | None = None):
    """(method, checkpoint): a run's method as it was after `epoch` (None: the newest usable
    checkpoint), built from the saved config and the data spec alone (no data files read).
    Reads only: unusable checkpoints are skipped with a warning, never moved."""
    cfg = _run_config(run)
    seed_everything(cfg.seed, "setup")
    method = create_method(cfg, SpecOnly(data_mod.describe(cfg.data)), logger)
    ckpt = checkpoint.load(run.checkpoints, epoch, warn=logger.warn, check=_state_check(method))
    _load_method_state(method, ckpt)
    return method, ckpt


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what writing it would create)."""
    missing = None
    while not os.path.lexists(path) and path != path.parent:
        missing, path = path, path.parent
    return missing


def _check_export_folder(out: Path, label: str) -> None:
    """Refuse an export folder that is a file or sits where nothing can be written, before
    any work."""
    missing = _first_missing(out)
    existing = missing.parent if missing is not None else out
    if not existing.is_dir():
        raise ConfigError(f"{label} {str(out)!r} cannot be a folder: {existing} is a file; "
                          f"give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{label} {str(out)!r} is not writable ({existing} refuses new "
                          f"files); give a folder you can write with --out")


def export_run(reference: str, epoch: str = "latest", kinds: Sequence[str] = ("inference_only",
               "trainable"), out: Path | None = None, root: Path = Path("trainings"),
               logger_factory=RunLogger, formats: Sequence[str] = (),
               sample: int | None = None, seed: int = 0) -> dict:
    """Export a run's derived architecture at a checkpoint (`latest`, `best` or an epoch).
    Writes only the exported model (under `out`, default the run's exported_models/).

    With `sample=K`, export instead K architectures the method samples from its distribution
    (`SearchMethod.sample_architectures`), each to `<out>/samples/seed-S/sample-KK/`; the
    result's keys are then "sample-KK/<kind>"."""
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    run = RunDir.open(reference, root)
    cfg = _run_config(run)
    if epoch == "latest":
        wanted = None
    elif epoch == "best":
        wanted = run.read_status().get("best_epoch")
        if wanted is None:
            raise RunError(f"run {run.name!r} has no best epoch yet (no epoch has finished)")
    else:
        try:
            wanted = int(epoch)
        except ValueError:
            raise ConfigError(f"--epoch must be a number, 'latest' or 'best', got {epoch!r}") from None
    target = Path(out) if out else run.exported
    _check_export_folder(target, "--out" if out else "the export folder")
    if not checkpoint.epochs_present(run.checkpoints):
        raise CheckpointError(f"run {run.name!r} has no checkpoint to export (it stopped during "
                              f"its first epoch); resume or re-run it first")
    logger = _quiet_logger(logger_factory)
    method, ckpt = restore_method(run, logger, wanted)
    if sample is None:
        jobs = [(method.derive(), target, "")]
    else:
        jobs = [(architecture, target / "samples" / f"seed-{seed}" / f"sample-{index:02d}",
                 f"sample-{index:02d}/")
                for index, architecture in enumerate(method.sample_architectures(sample, seed),
                                                     1)]
    written = {}
    for architecture, folder, label in jobs:
        created = _first_missing(folder / f"epoch-{ckpt.epoch:04d}")
        try:
            for kind, paths in export_architecture(method, architecture, folder,
                                                   export_name(cfg), ckpt.epoch, tuple(kinds),
                                                   formats=tuple(formats)).items():
                written[label + kind] = paths
        except OSError as exc:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            if not (is_environment_error(exc) or is_disk_full(exc)):
                raise
            raise RunError(f"cannot write the export to {folder} ({describe_os_error(exc)}); "
                           f"nothing was kept there - free space or choose another --out") \
                from None
    return written
