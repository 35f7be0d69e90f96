"""`lightnas sweep`: trials of a search config over a hyperparameter space, on autogluon.core's
`LocalSequentialScheduler`, with accuracy-versus-cost results for `lightnas report`.

A search config gains a `sweep:` section (`SweepConfig`): the space (dotted config keys mapped
to `categorical`, `real` (optionally log) or `int` spaces, i.e. `autogluon.common.space`
objects), the searcher (`random` or `grid`), the number of trials, the objective and the cost
models to trade it against. The sweep folder `<run.root>/<run.name>/` holds:

    sweep.yaml     the sweep section as given        base.yaml   the search config without it
    trials.csv     one row per trial: overrides, status, objective, metrics, costs, time, error
    trial_<k>/     an ordinary run folder (run.json records the sweep, trial and overrides)

Each trial is `run_trial(sweep folder, k, overrides)`: a pure function of its arguments that
starts, resumes or reads back the trial's run folder, so any scheduler that can call a
function (autogluon.core's local one here; a multi-machine launcher later) can run trials.
Resuming a sweep replays the searcher with the same seed: finished and failed trials are read
back from trials.csv, an interrupted trial resumes from its checkpoint, none runs twice from
scratch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf

from lightnas_cli import config as config_mod
from lightnas_cli.config.schema import setting
from lightnas_cli.config.validation import validate
from lightnas_cli.errors import ConfigError, LightNASError, RunError
from lightnas_cli.files import atomic_write
from lightnas_cli.runs import RunDir, _pid_alive

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base.yaml"
TRIALS_FILE = "trials.csv"
STATUS_FILE = "sweep.json"
OBJECTIVES = ("val_accuracy", "test_accuracy", "val_loss", "test_loss")
SPACE_TYPES = ("categorical", "real", "int")


@dataclass
class SweepConfig:
    # random (autogluon.core's LocalRandomSearcher: the first trial takes each space's default)
    # | grid (LocalGridSearcher: every combination; numeric spaces give `points` values each).
    searcher: str = setting("random", choices=("random", "grid"))
    # Trials to run (grid: at most the grid's size).
    num_trials: int = setting(4, ge=1)
    # Seed of the searcher (trials of one sweep are a fixed sequence, which makes it resumable).
    seed: int = 0
    # What a trial achieves, measured on its final derived network: val_accuracy |
    # test_accuracy (maximised) | val_loss | test_loss (minimised).
    objective: str = setting("val_accuracy", choices=OBJECTIVES)
    # Registered cost models the objective is traded against (one Pareto front each), each
    # `name` or `name:key=value,...` with the model's options (e.g. systolic:s1=32,s2=32).
    costs: List[str] = field(default_factory=lambda: ["params", "macs"])
    # Grid searcher: values taken from each real/int space (a space may set its own `points`).
    points: int = setting(4, ge=1)
    # Dotted config key -> space, e.g.
    #   pit.strength: {type: real, lower: 0.01, upper: 10, log: true}
    #   train.lr: {type: categorical, values: [0.001, 0.01]}
    #   controller.batch_size: {type: int, lower: 2, upper: 8}
    # `default` (optional) is the value of the random searcher's first trial.
    space: Dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.costs import cost_model_from_spec
        for spec in section.costs:
            try:
                cost_model_from_spec(spec)
            except ConfigError as exc:
                raise ConfigError(f"'sweep.costs': {exc}") from None


@dataclass
class TrialResult:
    """One row of trials.csv."""

    trial: int
    overrides: list[str]
    status: str
    objective: float | None = None
    metrics: dict = field(default_factory=dict)
    costs: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def is_sweep(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file() and (Path(path) / BASE_FILE).is_file()


def find_sweep(reference: str, root: Path = Path("trainings")) -> Path | None:
    """The sweep folder `reference` names (a name under root or a path), or None."""
    for path in (Path(reference), Path(root) / reference):
        if is_sweep(path):
            return path
    return None


# --- configs -----------------------------------------------------------------------------------

def parse_sweep(section: Any, source: str) -> Any:
    """The validated `sweep:` section (a structured OmegaConf config)."""
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: 'sweep' must be a mapping (searcher, num_trials, "
                          f"objective, costs, space)")
    schema = OmegaConf.structured(SweepConfig)
    try:
        cfg = OmegaConf.merge(schema, section)
    except Exception as exc:  # OmegaConf's errors name the key
        raise ConfigError(f"{source}: sweep: {str(exc).splitlines()[0]}") from None
    validate(cfg, source, prefix="sweep.")
    if not cfg.space:
        raise ConfigError(f"{source}: sweep.space is empty; name at least one config key, e.g. "
                          f"pit.strength: {{type: real, lower: 0.01, upper: 10, log: true}}")
    for key, spec in cfg.space.items():
        search_space(key, spec, source)
    return cfg


def search_space(key: str, spec: Any, source: str = "sweep") -> Any:
    """The `autogluon.common.space` object of one `sweep.space` entry."""
    from autogluon.common import space

    where = f"{source}: sweep.space.{key}"
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
    if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
        raise ConfigError(f"{where} must be a mapping with type: {' | '.join(SPACE_TYPES)}")
    kind = spec["type"]
    allowed = {"categorical": {"type", "values", "default"},
               "real": {"type", "lower", "upper", "log", "default", "points"},
               "int": {"type", "lower", "upper", "default", "points"}}[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; a {kind} space takes "
                          f"{sorted(allowed)}")
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list")
        return space.Categorical(*values)
    lower, upper = spec.get("lower"), spec.get("upper")
    numbers = (int,) if kind == "int" else (int, float)
    if not (isinstance(lower, numbers) and isinstance(upper, numbers)) or isinstance(
            lower, bool) or not lower < upper:
        raise ConfigError(f"{where}: needs numbers lower < upper, got {lower!r}, {upper!r}")
    if kind == "int":
        return space.Int(lower, upper, default=spec.get("default"))
    if spec.get("log") and lower <= 0:
        raise ConfigError(f"{where}: a log space needs lower > 0, got {lower}")
    return space.Real(float(lower), float(upper), default=spec.get("default"),
                      log=bool(spec.get("log", False)))


def read_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Any, Any, dict]:
    """(sweep section, resolved base search config, base config as a plain dict)."""
    source = str(path)
    data = config_mod.read_config_file(Path(path))
    if "sweep" not in data:
        raise ConfigError(f"{source} has no `sweep:` section; add one (see the README's "
                          f"\"Sweeps\" section) or run a single search with `lightnas search`")
    sweep_cfg = parse_sweep(data.pop("sweep"), source)
    base = config_mod.load_config(path, overrides, data=data)
    for key in sweep_cfg.space:
        if OmegaConf.select(base, key, default="<missing>") == "<missing>" and \
                not key.startswith("model.options."):
            raise ConfigError(f"{source}: sweep.space names {key!r}, which is not a key of this "
                              f"method's config (see `lightnas config show -c {source}`)")
    return sweep_cfg, base, OmegaConf.to_container(base, resolve=True)


# --- the sweep folder --------------------------------------------------------------------------

def _csv_columns(sweep_cfg: Any) -> list[str]:
    return (["trial", "status", "objective", "overrides", "val_accuracy", "test_accuracy",
             "val_loss", "test_loss"] + [f"cost_{name}" for name in sweep_cfg.costs]
            + ["seconds", "error"])


def read_trials(folder: Path) -> dict[int, TrialResult]:
    """The trials recorded so far, by number."""
    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        return {}
    results = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            number = lambda key: float(row[key]) if row.get(key) not in (None, "") else None
            results[int(row["trial"])] = TrialResult(
                trial=int(row["trial"]), overrides=json.loads(row["overrides"]),
                status=row["status"], objective=number("objective"),
                metrics={k: number(k) for k in OBJECTIVES if number(k) is not None},
                costs={k[5:]: number(k) for k in row if k.startswith("cost_")
                       and number(k) is not None},
                seconds=float(row.get("seconds") or 0.0), error=row.get("error", ""))
    return results


def write_trials(folder: Path, sweep_cfg: Any, results: dict[int, TrialResult]) -> None:
    """Rewrite trials.csv atomically, one row per trial in order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_csv_columns(sweep_cfg))
    writer.writeheader()
    for trial in sorted(results):
        result = results[trial]
        row = {"trial": result.trial, "status": result.status,
               "objective": "" if result.objective is None else result.objective,
               "overrides": json.dumps(result.overrides), "seconds": round(result.seconds, 3),
               "error": result.error}
        row.update({k: v for k, v in result.metrics.items() if k in OBJECTIVES})
        row.update({f"cost_{k}": v for k, v in result.costs.items()
                    if k in sweep_cfg.costs})
        writer.writerow(row)
    atomic_write(Path(folder) / TRIALS_FILE, buffer.getvalue())


def _write_status(folder: Path, **fields: Any) -> None:
    path = Path(folder) / STATUS_FILE
    status = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    status.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write(path, json.dumps(status, indent=2, sort_keys=True) + "\n")


def read_status(folder: Path) -> dict:
    path = Path(folder) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- trials ------------------------------------------------------------------------------------

def _format_value(value: Any) -> str:
    """A sampled value as an override literal OmegaConf reads back as the same value."""
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None \
        else str(value)


def trial_overrides(config: dict, keys: Sequence[str]) -> list[str]:
    """Dotlist overrides of one sampled configuration, in the space's key order."""
    return [f"{key}={_format_value(config[key])}" for key in keys]


def _trial_results(run: RunDir, sweep_cfg: Any) -> tuple[dict, dict]:
    """(metrics, costs) of a finished trial's final derived network.

    Costs come from the registered cost models on the network the method builds from the
    final architecture (the exported one); metrics from the last epoch and the test split."""
    from lightnas_cli import costs as cost_models
    from lightnas_cli import runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.base import Architecture

    status = run.read_status()
    records = run.read_metrics()
    last = records[-1] if records else {}
    metrics = {key: float(last[key]) for key in ("val_accuracy", "val_loss") if key in last}
    metrics.update({key: float(status[key]) for key in ("test_accuracy", "test_loss")
                    if status.get(key) is not None})
    final = run.path / status.get("final_architecture", "")
    architecture = Architecture.from_json(final.read_text(encoding="utf-8"), source=str(final))
    with RunLogger(run.logs, tensorboard=False) as logger:
        method, _ = runner.restore_method(run, logger)
        net = method.build(architecture)
    net.hybridize(active=False)
    layers = cost_models.profile(net, architecture.input_shape)
    costs = {name: float(cost_models.cost_model_from_spec(name).total(layers))
             for name in sweep_cfg.costs}
    return metrics, costs


def _objective(sweep_cfg: Any, metrics: dict) -> float | None:
    value = metrics.get(sweep_cfg.objective)
    return None if value is None else float(value)


def run_trial(folder: Path, number: int, overrides: list[str], sweep_cfg: Any,
              logger: Any = None) -> TrialResult:
    """Start, resume or read back trial `number` of the sweep in `folder`.

    A trial that fails on user input (a bad value, a model that cannot be built) is recorded
    as failed with its error; a bug propagates."""
    from lightnas_cli import checkpoint, runner

    folder = Path(folder)
    name = f"trial_{number}"
    run_path = folder / name
    started = time.time()
    extra = [f"run.root={folder}", f"run.name={name}"]
    try:
        if run_path.is_dir() and RunDir(run_path).read_status().get("status") != "finished":
            if checkpoint.complete_epochs(RunDir(run_path).checkpoints):
                runner.resume_search(str(run_path))
            else:
                # Stopped in its first epoch: nothing to resume. Keep the folder, start anew.
                aside = folder / f"{name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
                run_path.rename(aside)
                if logger:
                    logger.warn(f"{name} stopped before its first checkpoint; kept it as "
                                f"{aside.name} and started it again")
        if not run_path.is_dir():
            runner.start_search(str(folder / BASE_FILE), list(overrides) + extra,
                                autosave=False,
                                status={"sweep": folder.name, "trial": number,
                                        "overrides": list(overrides)})
        metrics, costs = _trial_results(RunDir(run_path), sweep_cfg)
    except LightNASError as exc:
        return TrialResult(number, list(overrides), "failed", seconds=time.time() - started,
                           error=str(exc))
    objective = _objective(sweep_cfg, metrics)
    return TrialResult(number, list(overrides), "finished", objective, metrics, costs,
                       time.time() - started)


def _reward(sweep_cfg: Any, result: TrialResult) -> float:
    """What the scheduler maximises: the objective, negated for losses."""
    value = result.objective if result.objective is not None else -math.inf
    return -value if sweep_cfg.objective.endswith("_loss") else value


def _scheduler(sweep_cfg: Any, train_fn: Any, num_trials: int) -> Any:
    from autogluon.core.scheduler import LocalSequentialScheduler

    spaces = {key: search_space(key, spec) for key, spec in sweep_cfg.space.items()}
    options: dict[str, Any] = {"random_seed": int(sweep_cfg.seed)}
    if sweep_cfg.searcher == "grid":
        points = {key: int(spec["points"]) for key, spec in sweep_cfg.space.items()
                  if isinstance(spec, dict) and "points" in spec}
        options = {"grid_numeric_spaces_points_number": int(sweep_cfg.points),
                   "grid_num_sample_settings": points or None}
    searcher = "local_random" if sweep_cfg.searcher == "random" else "local_grid"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LocalSequentialScheduler(train_fn, search_space=spaces, searcher=searcher,
                                        search_options=options, reward_attr="reward",
                                        num_trials=num_trials)


def _grid_size(sweep_cfg: Any) -> int:
    size = 1
    for spec in sweep_cfg.space.values():
        spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
        if spec["type"] == "categorical":
            size *= len(spec["values"])
        elif spec["type"] == "int":
            size *= min(spec["upper"] - spec["lower"] + 1,
                        int(spec.get("points", sweep_cfg.points)))
        else:
            size *= int(spec.get("points", sweep_cfg.points))
    return size


def _run(folder: Path, sweep_cfg: Any, logger: Any) -> dict[int, TrialResult]:
    """Run (or continue) every trial through the scheduler; trials.csv after each."""
    results = read_trials(folder)
    keys = list(sweep_cfg.space)
    num_trials = int(sweep_cfg.num_trials)
    if sweep_cfg.searcher == "grid":
        num_trials = min(num_trials, _grid_size(sweep_cfg))

    def train_fn(args: dict, reporter: Any) -> None:
        number = int(args["task_id"]) + 1
        overrides = trial_overrides(args, keys)
        recorded = results.get(number)
        if recorded is not None and recorded.overrides != overrides:
            raise RunError(f"{folder}: trial {number} was recorded with {recorded.overrides} but "
                           f"the searcher now proposes {overrides}; the sweep's space or seed "
                           f"changed since it started")
        if recorded is not None and recorded.status in ("finished", "failed"):
            result = recorded
        else:
            logger.info(f"trial {number}/{num_trials}: {' '.join(overrides)}")
            result = run_trial(folder, number, overrides, sweep_cfg, logger)
            results[number] = result
            write_trials(folder, sweep_cfg, results)
            if result.status == "failed":
                logger.warn(f"trial {number} failed: {result.error}")
        if result.status == "finished":
            reporter(reward=_reward(sweep_cfg, result))

    _write_status(folder, status="running", num_trials=num_trials, pid=os.getpid())
    try:
        _scheduler(sweep_cfg, train_fn, num_trials).run()
    except KeyboardInterrupt:
        _write_status(folder, status="interrupted")
        logger.warn(f"interrupted; continue with `lightnas resume {folder}`")
        raise
    done = sum(r.status in ("finished", "failed") for r in results.values())
    _write_status(folder, status="finished" if done >= num_trials else "interrupted",
                  trials=len(results), finished=sum(r.status == "finished"
                                                    for r in results.values()))
    return results


def start_sweep(config_path: str, overrides: Sequence[str] = (), logger: Any = None) -> Path:
    """Validate the sweep and its base config, create the sweep folder and run the trials."""
    from lightnas_cli.runner import run_name

    sweep_cfg, base, base_data = read_sweep_config(config_path, overrides)
    name = base.run.name or "sweep_" + run_name(base)
    folder = Path(base.run.root) / name
    if folder.exists():
        raise RunError(f"a run or sweep named {name!r} already exists at {folder}; choose "
                       f"another name with run.name=NEW_NAME, or continue it with "
                       f"`lightnas resume {name}`")
    folder.mkdir(parents=True)
    sweep_data = OmegaConf.to_container(sweep_cfg, resolve=True)
    atomic_write(folder / SWEEP_FILE, yaml.safe_dump(sweep_data, sort_keys=False))
    base_data["run"] = {"name": None, "root": str(folder)}
    atomic_write(folder / BASE_FILE, yaml.safe_dump(base_data, sort_keys=False))
    _write_status(folder, status="running", method=base.method, model=base.model.name,
                  dataset=base.data.name, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _run(folder, sweep_cfg, logger or _console())
    return folder


def resume_sweep(folder: Path, logger: Any = None) -> Path:
    """Continue a sweep: recorded trials are read back, an interrupted one resumes."""
    sweep_cfg = parse_sweep(yaml.safe_load((Path(folder) / SWEEP_FILE).read_text("utf-8")),
                            str(Path(folder) / SWEEP_FILE))
    _run(Path(folder), sweep_cfg, logger or _console())
    return Path(folder)


def load_sweep(folder: Path) -> tuple[Any, dict[int, TrialResult]]:
    """(sweep section, trials) of a sweep folder, for reports and listings."""
    sweep_cfg = parse_sweep(yaml.safe_load((Path(folder) / SWEEP_FILE).read_text("utf-8")),
                            str(Path(folder) / SWEEP_FILE))
    return sweep_cfg, read_trials(folder)


def _console() -> Any:
    from lightnas_cli.logging import RunLogger
    return RunLogger(Path("."), tensorboard=False)


def list_sweeps(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_sweep(p))


def front_trials(sweep_cfg: Any, trials: dict[int, TrialResult]) -> set[int]:
    """Trials on the Pareto front of the objective against any of the sweep's costs."""
    from lightnas_cli.report import pareto_front

    maximize = not sweep_cfg.objective.endswith("_loss")
    on_front: set[int] = set()
    for cost in sweep_cfg.costs:
        usable = [t for t in trials.values() if t.status == "finished"
                  and t.objective is not None and t.costs.get(cost) is not None]
        points = [(float(t.costs[cost]), float(t.objective)) for t in usable]
        on_front.update(usable[i].trial for i in pareto_front(points, maximize))
    return on_front


def sweep_row(folder: Path) -> list[str]:
    """The `lightnas runs` row of a sweep: trials done, best objective, points on the fronts."""
    status = read_status(folder)
    try:
        sweep_cfg, trials = load_sweep(folder)
    except (LightNASError, OSError, ValueError, yaml.YAMLError):
        return [folder.name, "sweep", "?", "?", "?", "unreadable", "-", "-", "-", "-"]
    finished = [t for t in trials.values() if t.status == "finished" and t.objective is not None]
    best = None
    if finished:
        pick = min if sweep_cfg.objective.endswith("_loss") else max
        best = pick(t.objective for t in finished)
    state = status.get("status", "?")
    if state == "running" and not _pid_alive(int(status.get("pid", 0) or 0)):
        state = "interrupted"
    return [folder.name, "sweep", str(status.get("method", "?")), str(status.get("model", "?")),
            str(status.get("dataset", "?")), state,
            f"{len(trials)}/{status.get('num_trials', sweep_cfg.num_trials)} trials",
            "-" if best is None else f"{best:.4f} {sweep_cfg.objective}", "-",
            f"front {len(front_trials(sweep_cfg, trials))} pts"]
