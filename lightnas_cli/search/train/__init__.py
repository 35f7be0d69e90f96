"""`lightnas train`: train the winner of any search (or a zoo model) to completion, in the same
runner and run folder format as a search (run.json `kind: train`). The `train` method builds the
plain network of an architecture through its own method's `build()` (no supernet, no masks)
and trains it from scratch or from the search's weights; `source.py` turns what the user
names (a run, an architecture file, a zoo model) into the run's self-contained config."""
from lightnas_cli.search.base import register_method
from lightnas_cli.search.train.config import TrainRunConfig

register_method("train", schema=TrainRunConfig,
                implementation="lightnas_cli.search.train.method:TrainMethod")
