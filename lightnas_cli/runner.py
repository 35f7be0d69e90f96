"""The one epoch loop every search method uses.

Per epoch: re-seed from (seed, epoch), train, evaluate, derive, log, draw, (export), checkpoint.
The checkpoint carries the metrics history, so a resumed run rewrites `metrics.jsonl` to one
line per completed epoch and continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from lightnas_cli import checkpoint, config as config_mod, data as data_mod, viz
from lightnas_cli.devices import parse_contexts
from lightnas_cli.errors import CheckpointError, ConfigError, RunError
from lightnas_cli.export import export_architecture
from lightnas_cli.logging import RunLogger
from lightnas_cli.runs import RunDir, versions
from lightnas_cli.search.base import get_method
from lightnas_cli.seeding import seed_everything


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


def start_search(config_path: str | None, overrides: Sequence[str] = (),
                 logger_factory=RunLogger) -> RunDir:
    """Validate everything, create the run folder, and search. Nothing is created on bad input."""
    cfg = config_mod.load_config(config_path, overrides)
    name = run_name(cfg)
    root = Path(cfg.run.root)
    if (root / name).exists():
        raise RunError(f"a run named {name!r} already exists at {root / name}; choose another "
                       f"name with run.name=NEW_NAME, or continue it with `lightnas resume {name}`")
    parse_contexts(list(cfg.train.contexts))
    get_method(cfg.method)
    data = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)  # fails before any folder
    run = RunDir.create(root, name)
    cfg.run.name = name
    config_mod.save_config(cfg, run.config_file)
    if overrides:
        config_mod.save_config(cfg, Path("configs") / "autosaved" / f"{name}.yml")
    run.update_status(status="running", pid=os.getpid(), method=cfg.method, model=cfg.model.name,
                      dataset=cfg.data.name, epochs=int(cfg.train.epochs), epoch=0,
                      versions=versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _run_loop(run, cfg, data, resume=False, logger_factory=logger_factory)
    return run


def resume_search(reference: str, epochs: int | None = None, root: Path = Path("trainings"),
                  logger_factory=RunLogger) -> RunDir:
    """Continue a run from its newest complete checkpoint (falling back past corrupt ones)."""
    run = RunDir.open(reference, root)
    cfg = config_mod.load_config(run.config_file)
    if epochs is not None:
        if epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        cfg.train.epochs = epochs
    data = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)
    if not checkpoint.complete_epochs(run.checkpoints):
        raise CheckpointError(f"run {run.name!r} has no checkpoint yet (it stopped during its "
                              f"first epoch); start it again with `lightnas search -c "
                              f"{run.config_file} run.name=NEW_NAME`")
    with run.lock():
        if epochs is not None:
            config_mod.save_config(cfg, run.config_file)
        run.update_status(status="running", pid=os.getpid(), epochs=int(cfg.train.epochs))
    _run_loop(run, cfg, data, resume=True, logger_factory=logger_factory)
    return run


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


def _run_loop(run: RunDir, cfg: DictConfig, data, resume: bool, logger_factory) -> None:
    seed_everything(cfg.seed, "setup")
    with run.lock(), logger_factory(run.logs) as logger:
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminate)
        try:
            method = create_method(cfg, data, logger)
            history: list[dict] = []
            start = 1
            if resume:
                ckpt = checkpoint.load(run.checkpoints, warn=logger.warn)
                method.load_state(ckpt.arrays, ckpt.state["method"])
                history = [r for r in ckpt.state.get("history", []) if r["epoch"] <= ckpt.epoch]
                run.rewrite_metrics(history)
                start = ckpt.epoch + 1
                logger.info(f"resuming {run.name} from epoch {ckpt.epoch} "
                            f"({ckpt.path.name}); {cfg.train.epochs - ckpt.epoch} epoch(s) to go")
            for epoch in range(start, cfg.train.epochs + 1):
                history.append(_one_epoch(run, cfg, method, logger, epoch, history))
            _finish(run, cfg, method, logger, history)
        except KeyboardInterrupt:
            run.update_status(status="interrupted")
            logger.warn(f"interrupted; continue with `lightnas resume {run.name}`")
            raise
        except Exception:
            run.update_status(status="failed")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)


def _raise_terminate(signum, frame):
    """`kill` (SIGTERM) stops a run like Ctrl-C: marked interrupted, resumable."""
    raise KeyboardInterrupt()


def _one_epoch(run: RunDir, cfg: DictConfig, method, logger: RunLogger, epoch: int,
               history: list[dict]) -> dict:
    seed_everything(cfg.seed, "epoch", epoch)
    started = time.time()
    record = {"epoch": epoch}
    record.update(method.train_epoch(epoch))
    record.update(method.evaluate("val"))
    architecture = method.derive()
    record["cost"] = architecture.costs.get("cost")
    record["seconds"] = round(time.time() - started, 3)
    # Logs and graphs are re-made identically if this epoch is re-run after a crash.
    logger.scalars({_tag(k): v for k, v in record.items() if k not in ("epoch", "seconds")}, epoch)
    logger.scalars({f"cost/{k}": v for k, v in architecture.costs.items()}, epoch)
    _log_probabilities(logger, architecture, epoch)
    viz.write_architecture(architecture, run.architectures / f"epoch_{epoch}")
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
    written = export_architecture(method, architecture, run.exported, export_name(cfg), last)
    test = method.evaluate("test") if getattr(method.data, "test", None) is not None else {}
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
    """(method, checkpoint): a run's method as it was after `epoch` (None: the newest complete
    checkpoint), built from the saved config and the data spec alone (no data files read)."""
    cfg = config_mod.load_config(run.config_file)
    seed_everything(cfg.seed, "setup")
    ckpt = checkpoint.load(run.checkpoints, epoch, warn=logger.warn)
    method = create_method(cfg, SpecOnly(data_mod.describe(cfg.data)), logger)
    method.load_state(ckpt.arrays, ckpt.state["method"])
    return method, ckpt


def export_run(reference: str, epoch: str = "latest", kinds: Sequence[str] = ("inference_only",
               "trainable"), out: Path | None = None, root: Path = Path("trainings"),
               logger_factory=RunLogger, sample: int | None = None, seed: int = 0) -> dict:
    """Export a run's derived architecture at a checkpoint (`latest`, `best` or an epoch).

    With `sample=K`, export instead K architectures the method samples from its distribution
    (`SearchMethod.sample_architectures`), each to `<out>/samples/seed-S/sample-KK/`; the
    result's keys are then "sample-KK/<kind>"."""
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    run = RunDir.open(reference, root)
    cfg = config_mod.load_config(run.config_file)
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
    if not checkpoint.complete_epochs(run.checkpoints):
        raise CheckpointError(f"run {run.name!r} has no checkpoint to export (it stopped during "
                              f"its first epoch); resume or re-run it first")
    with logger_factory(run.logs, tensorboard=False) as logger:
        method, ckpt = restore_method(run, logger, wanted)
        target = Path(out) if out else run.exported
        if sample is None:
            return export_architecture(method, method.derive(), target, export_name(cfg),
                                       ckpt.epoch, tuple(kinds))
        written = {}
        for index, architecture in enumerate(method.sample_architectures(sample, seed), 1):
            folder = target / "samples" / f"seed-{seed}" / f"sample-{index:02d}"
            for kind, paths in export_architecture(method, architecture, folder,
                                                   export_name(cfg), ckpt.epoch,
                                                   tuple(kinds)).items():
                written[f"sample-{index:02d}/{kind}"] = paths
        return written

