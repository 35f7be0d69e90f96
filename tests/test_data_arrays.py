"""`data.name: arrays`: a user's .npz through the in-memory path (layouts, labels, errors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import TINY_ENAS, run_cli, write_config
from lightnas_cli.config.schema import DataConfig
from lightnas_cli.data import describe, load
from lightnas_cli.errors import ConfigError, DataError


def cfg(path: Path, **values):
    data = OmegaConf.structured(DataConfig)
    data.name, data.file = "arrays", str(path)
    for key, value in values.items():
        OmegaConf.update(data, key, value, merge=False)
    return data


def save(path: Path, x_train, y_train, x_test, y_test) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def signals(n: int, shape: tuple, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.randint(0, 3, size=n)


def test_one_and_two_axis_samples(tmp_path: Path) -> None:
    x, y = signals(40, (50,))
    xt, yt = signals(10, (50,), 1)
    path = save(tmp_path / "a.npz", x, y, xt, yt)
    spec = describe(cfg(path))
    assert (spec.shape, spec.classes, spec.layout) == ((1, 50), 3, "NCW")
    bundle = load(cfg(path, eval_split_percentage=0), seed=0, batch_size=8)
    # The in-memory path: normalised with the training split's statistics, order kept.
    np.testing.assert_allclose(bundle.test.data[:, 0] * bundle.std[0] + bundle.mean[0], xt,
                               atol=1e-5)
    np.testing.assert_array_equal(bundle.test.label, yt)

    x2, y2 = signals(40, (50, 3))  # stored length x channels
    path2 = save(tmp_path / "b.npz", x2, y2, x2[:5], y2[:5])
    assert describe(cfg(path2)).shape == (50, 3)  # auto reads 2-D samples as channels x length
    spec = describe(cfg(path2, array_layout="WC"))
    assert spec.shape == (3, 50)
    wc = load(cfg(path2, array_layout="WC", eval_split_percentage=0, mean=[0, 0, 0],
                  std=[1, 1, 1]), seed=0, batch_size=8)
    np.testing.assert_array_equal(wc.test.data, np.moveaxis(x2[:5], -1, 1))

    images, labels = signals(30, (8, 8))
    path3 = save(tmp_path / "c.npz", images, labels, images[:4], labels[:4])
    assert describe(cfg(path3, array_layout="HW")).shape == (1, 8, 8)
    assert describe(cfg(path3, array_layout="HW")).layout == "NCHW"


@pytest.mark.parametrize("case, error, phrase", [
    ("beyond", DataError, "outside 0..1"),
    ("fraction", DataError, "not class indices"),
    ("missing", DataError, "lacks x_test, y_test"),
    ("objects", DataError, "Python objects"),
    ("layout", ConfigError, "3-axis samples"),
    ("no_file", ConfigError, "data.file is required"),
])
def test_bad_arrays(tmp_path: Path, case: str, error: type, phrase: str) -> None:
    x, y = signals(20, (10,))
    path = tmp_path / "bad.npz"
    extra = {}
    if case == "beyond":
        save(path, x, y, x[:4], y[:4])
        extra = {"classes": 2}
    elif case == "fraction":
        save(path, x, y + 0.5, x[:4], y[:4])
    elif case == "missing":
        np.savez(path, x_train=x, y_train=y)
    elif case == "objects":
        save(path, np.array([None] * 20, dtype=object), y, x[:4], y[:4])
    elif case == "layout":
        save(path, x, y, x[:4], y[:4])
        extra = {"array_layout": "CHW"}
    data = cfg(path, **extra)
    if case == "no_file":
        data.file = None
    with pytest.raises(error, match=phrase):
        describe(data)
        load(data, seed=0, batch_size=4)


def test_cli_check_arrays(tmp_path: Path) -> None:
    x, y = signals(50, (2, 20))
    path = save(tmp_path / "s.npz", x, y, x[:10], y[:10])
    config = write_config(tmp_path, {**TINY_ENAS, "data": {"name": "arrays", "file": str(path)}})
    result = run_cli(["data", "check", "-c", str(config)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "shape 2 x 20 (NCW), 3 classes" in result.stdout
    assert "train: 40 samples" in result.stdout and "test: 10 samples" in result.stdout
    test_counts = " ".join(f"{c}:{n}" for c, n in enumerate(np.bincount(y[:10], minlength=3)))
    lines = result.stdout.splitlines()
    assert lines[lines.index("test: 10 samples (in memory)") + 1].strip() == \
        f"per class: {test_counts}"
