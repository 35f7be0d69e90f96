"""Training throughput of a search on 1 and 2 loopback workers of `lightnas launch`.

Prints JSON: for a plain `lightnas search` (no parameter server) and for `lightnas launch
--workers N -- search` (N = 1, 2) on the same config, the training samples per second of the
epochs after the first (each epoch's wall time from metrics.jsonl: training, the method's
architecture step, validation; the first epoch also pays hybridization and kvstore set-up).
A launched run always trains the global batch (`train.batch_size`), each worker a 1/N shard.

On a machine with fewer cores than workers x threads this measures the overhead of the
parameter server (one scheduler, one server, gradient push/pull over loopback TCP, the
workers sharing the cores), not a speed-up: on 2 cores two workers get one core each, which
one process would have used as well.

    python benchmarks/distributed_scaling.py [--config configs/mock/enas_resnet18.yml]
                                             [--epochs 3] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _training_samples(config: Path, overrides: list[str]) -> int:
    """Samples one epoch trains on (all workers together): the training split's full batches."""
    from lightnas_cli import config as config_mod, data as data_mod

    cfg = config_mod.load_config(str(config), overrides)
    loader = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size).train
    return sum(loader.step_samples(index) for index in range(len(loader)))


def _run(args: list[str], folder: Path, env: dict) -> float:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "lightnas_cli", *args], cwd=folder, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"`lightnas {' '.join(args)}` failed:\n{done.stdout[-3000:]}")
    return time.time() - started


def measure(config: Path, epochs: int, workers: int | None, samples: int, env: dict) -> dict:
    """One run (workers None: plain `lightnas search`); samples/s over epochs 2.."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        search = ["search", "-c", str(config.resolve()), "run.name=bench",
                  f"train.epochs={epochs}"]
        command = search if workers is None else ["launch", "--workers", str(workers), "--",
                                                  *search]
        wall = _run(command, folder, env)
        lines = (folder / "trainings" / "bench" / "metrics.jsonl").read_text().splitlines()
        seconds = [json.loads(line)["seconds"] for line in lines][1:]
    return {"workers": workers or 1, "launch": workers is not None,
            "samples_per_s": round(samples * len(seconds) / sum(seconds), 1),
            "epoch_seconds": seconds, "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/mock/enas_resnet18.yml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    options = parser.parse_args()
    if options.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not counted)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    # Each process picks its own threads: all cores for one process, a share for each
    # launched worker (the launcher divides them) - as a user without OMP_NUM_THREADS gets.
    env.pop("OMP_NUM_THREADS", None)
    samples = _training_samples(options.config, [f"train.epochs={options.epochs}"])
    runs = [measure(options.config, options.epochs, None, samples, env)]
    runs += [measure(options.config, options.epochs, n, samples, env) for n in options.workers]
    plain = runs[0]["samples_per_s"]
    for run in runs:
        run["vs_plain"] = round(run["samples_per_s"] / plain, 3)
    print(json.dumps({
        "config": str(options.config.relative_to(REPO) if options.config.is_absolute()
                      and REPO in options.config.parents else options.config),
        "cores": os.cpu_count(), "training_samples_per_epoch": samples,
        "counted_epochs": options.epochs - 1, "runs": runs,
        "note": (f"{os.cpu_count()} cores: with fewer cores than workers need, this measures the "
                 f"parameter server's overhead (loopback push/pull, scheduler and server, "
                 f"workers sharing the cores), not a speed-up"),
    }, indent=2))


if __name__ == "__main__":
    main()
