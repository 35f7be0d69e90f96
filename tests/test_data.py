"""Data registry, readers and loaders: shapes, CIFAR binary format, splits, determinism."""
from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from omegaconf import OmegaConf

from lightnas_cli.config.schema import DataConfig
from lightnas_cli.data import (
    CIFAR10,
    CIFAR100,
    ArrayLoader,
    DataSpec,
    describe,
    load,
    random_crop_flip,
    read_cifar_file,
    resize_images,
    split_indices,
)
from lightnas_cli.errors import DataError


def data_cfg(**overrides):
    """A DataConfig as the CLI hands it over: a structured OmegaConf DictConfig."""
    cfg = OmegaConf.structured(DataConfig)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def batches(loader):
    return [(x.asnumpy(), y.asnumpy()) for x, y in loader]


# ------------------------------------------------------------------------------------ describe


def test_describe_without_files():
    assert describe(data_cfg()) == DataSpec("mock", (3, 32, 32), 10, "NCHW")
    assert describe(data_cfg(**{"mock.shape": [4, 100], "mock.num_classes": 5})) == DataSpec(
        "mock", (4, 100), 5, "NCW"
    )
    assert describe(data_cfg(name="digits")) == DataSpec("digits", (1, 8, 8), 10, "NCHW")
    assert describe(data_cfg(name="digits", image_size=16)).shape == (1, 16, 16)
    # cifar: no data.dir needed just to know the shape.
    assert describe(data_cfg(name="cifar10")) == DataSpec("cifar10", (3, 32, 32), 10, "NCHW")
    assert describe(data_cfg(name="cifar100", image_size=24)) == DataSpec(
        "cifar100", (3, 24, 24), 100, "NCHW"
    )
    # the plain dataclass works too
    assert describe(DataConfig(name="digits")).classes == 10


def test_unknown_name_suggests():
    with pytest.raises(DataError) as err:
        describe(data_cfg(name="cifar"))
    msg = str(err.value)
    assert "cifar10" in msg and "mock" in msg and "digits" in msg and "Did you mean" in msg


def test_bad_mock_shape():
    with pytest.raises(DataError, match="data.mock.shape"):
        describe(data_cfg(**{"mock.shape": [3, 2, 2, 2]}))


# ---------------------------------------------------------------------------------------- mock


def test_mock_labels_cover_all_classes():
    cfg = data_cfg(eval_split_percentage=0, **{"mock.num_classes": 37, "mock.shape": [1, 4, 4],
                                               "mock.num_train": 370, "mock.num_test": 74})
    bundle = load(cfg, seed=3, batch_size=50)
    assert bundle.spec.classes == 37
    for loader, n in ((bundle.train, 370), (bundle.test, 74)):
        labels = loader.label.astype(int)
        assert loader.num_samples == n
        assert set(labels) == set(range(37))
        assert np.bincount(labels, minlength=37).min() == n // 37  # balanced


@pytest.mark.parametrize("shape,layout", [([3, 8, 8], "NCHW"), ([2, 50], "NCW")])
def test_mock_shapes(shape, layout):
    bundle = load(data_cfg(**{"mock.shape": shape, "mock.num_train": 40, "mock.num_test": 10}), 0, 16)
    assert bundle.spec.layout == layout and bundle.spec.shape == tuple(shape)
    x, y = next(iter(bundle.train))
    assert isinstance(x, mx.nd.NDArray) and x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (16, *shape) and y.shape == (16,)
    assert x.context == mx.cpu()
    assert bundle.test.num_samples == 10


def test_mock_is_separable():
    """Nearest class mean (fit on train) classifies the test split far above chance (10%)."""
    cfg = data_cfg(eval_split_percentage=0, **{"mock.shape": [3, 8, 8]})
    bundle = load(cfg, seed=0, batch_size=64)
    x, y = bundle.train.data.reshape(bundle.train.num_samples, -1), bundle.train.label.astype(int)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    xt, yt = bundle.test.data.reshape(bundle.test.num_samples, -1), bundle.test.label.astype(int)
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yt).mean() > 0.9


def test_mock_depends_on_seed_only():
    a = load(data_cfg(), 1, 32).test.data
    b = load(data_cfg(), 1, 32).test.data
    c = load(data_cfg(), 2, 32).test.data
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_split():
    bundle = load(data_cfg(name="digits", eval_split_percentage=0), 0, 64)
    assert bundle.spec == DataSpec("digits", (1, 8, 8), 10, "NCHW")
    assert bundle.train.num_samples == 1438 and bundle.test.num_samples == 359
    assert bundle.val_is_test
    assert set(bundle.test.label.astype(int)) == set(range(10))
    # normalized with train statistics
    assert abs(float(bundle.train.data.mean())) < 1e-4
    assert abs(float(bundle.train.data.std()) - 1.0) < 1e-3


def test_digits_upsampling():
    bundle = load(data_cfg(name="digits", image_size=32, eval_split_percentage=10), 0, 64)
    assert bundle.spec.shape == (1, 32, 32)
    x, _ = next(iter(bundle.val))
    assert x.shape == (64, 1, 32, 32)


def test_resize_identity_and_area():
    rng = np.random.RandomState(0)
    img = rng.rand(2, 3, 8, 8).astype(np.float32)
    assert np.array_equal(resize_images(img, 8), img)
    up = resize_images(img, 32)
    assert up.shape == (2, 3, 32, 32)
    assert np.allclose(up.mean(axis=(2, 3)), img.mean(axis=(2, 3)), atol=0.02)
    down = resize_images(up, 16)
    manual = up.reshape(2, 3, 16, 2, 16, 2).mean(axis=(3, 5))
    assert np.allclose(down, manual, atol=1e-5)


# --------------------------------------------------------------------------------------- cifar


def write_cifar(folder: Path, fmt, names, records: int, seed: int) -> dict:
    """Write tiny binary CIFAR files; returns {name: (images uint8 (N,3,32,32), labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    written = {}
    for name in names:
        images = rng.randint(0, 256, size=(records, 3, 32, 32)).astype(np.uint8)
        fine = (np.arange(records) * 7 + seed) % fmt.classes
        rows = [images.reshape(records, -1)]
        if fmt.label_bytes == 2:
            coarse = fine // 5
            rows.insert(0, fine[:, None].astype(np.uint8))
            rows.insert(0, coarse[:, None].astype(np.uint8))
        else:
            rows.insert(0, fine[:, None].astype(np.uint8))
        (folder / name).write_bytes(np.concatenate(rows, axis=1).tobytes())
        written[name] = (images, fine)
    return written


def test_cifar10_reader_exact(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    files = write_cifar(root, CIFAR10, [*CIFAR10.train_files, CIFAR10.test_file], 20, 1)
    # Exact bytes: record 3 of batch 2, built by hand in the documented layout.
    images, labels = files["data_batch_2.bin"]
    raw = (root / "data_batch_2.bin").read_bytes()
    rec = raw[3 * 3073 : 4 * 3073]
    assert rec[0] == labels[3]
    assert rec[1] == images[3, 0, 0, 0]  # red plane first
    assert rec[1 + 1024 + 32 * 5 + 7] == images[3, 1, 5, 7]  # green, row 5, col 7
    assert rec[1 + 2048 + 1023] == images[3, 2, 31, 31]  # blue, last pixel

    x, y = read_cifar_file(root / "data_batch_2.bin", CIFAR10)
    assert x.dtype == np.uint8 and x.shape == (20, 3, 32, 32)
    assert np.array_equal(x, images) and np.array_equal(y, labels)

    # Through load(), with data.dir pointing at the parent folder.
    bundle = load(data_cfg(name="cifar10", dir=str(tmp_path), eval_split_percentage=0), 0, 8)
    assert bundle.spec == DataSpec("cifar10", (3, 32, 32), 10, "NCHW")
    assert bundle.train.num_samples == 100 and bundle.test.num_samples == 20
    test_images, test_labels = files["test_batch.bin"]
    restored = bundle.test.data * bundle.std.reshape(1, 3, 1, 1) + bundle.mean.reshape(1, 3, 1, 1)
    assert np.allclose(restored, test_images / 255.0, atol=1e-5)
    assert np.array_equal(bundle.test.label, test_labels.astype(np.float32))
    train_images = np.concatenate([files[n][0] for n in CIFAR10.train_files]) / 255.0
    expected_mean = train_images.mean(axis=(0, 2, 3))
    assert np.allclose(bundle.mean, expected_mean, atol=1e-5)


def test_cifar100_reader_fine_labels(tmp_path):
    files = write_cifar(tmp_path, CIFAR100, ["train.bin", "test.bin"], 20, 2)
    x, y = read_cifar_file(tmp_path / "train.bin", CIFAR100)
    images, fine = files["train.bin"]
    assert np.array_equal(x, images) and np.array_equal(y, fine)
    assert y.max() >= 20  # fine labels, not coarse (coarse would stay < 20 here)
    bundle = load(data_cfg(name="cifar100", dir=str(tmp_path), image_size=16,
                           eval_split_percentage=25), 0, 4)
    assert bundle.spec == DataSpec("cifar100", (3, 16, 16), 100, "NCHW")
    assert bundle.train.num_samples == 15 and bundle.val.num_samples == 5
    assert bundle.test.data.shape == (20, 3, 16, 16)


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(DataError) as err:
        load(data_cfg(name="cifar10", dir=str(tmp_path)), 0, 8)
    msg = str(err.value)
    for name in ("data_batch_1.bin", "data_batch_5.bin", "test_batch.bin", str(tmp_path),
                 "cifar-10-batches-bin", "binary version", "data.dir"):
        assert name in msg
    with pytest.raises(DataError, match="data.dir is not set"):
        load(data_cfg(name="cifar100"), 0, 8)
    with pytest.raises(DataError, match="does not exist"):
        load(data_cfg(name="cifar100", dir=str(tmp_path / "nope")), 0, 8)
    # a partial folder names what is missing
    write_cifar(tmp_path, CIFAR100, ["train.bin"], 4, 0)
    with pytest.raises(DataError, match="lacks test.bin"):
        load(data_cfg(name="cifar100", dir=str(tmp_path)), 0, 8)


def test_cifar_python_version_refused(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="pickle"):
        load(data_cfg(name="cifar10", dir=str(tmp_path)), 0, 8)


def test_cifar_truncated_and_wrong_variant(tmp_path):
    write_cifar(tmp_path, CIFAR10, [*CIFAR10.train_files, CIFAR10.test_file], 3, 0)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_3.bin.*not a complete"):
        load(data_cfg(name="cifar10", dir=str(tmp_path)), 0, 8)
    # CIFAR-100 records read as CIFAR-10 have the wrong size or out-of-range labels
    other = tmp_path / "c100"
    write_cifar(other, CIFAR100, ["train.bin"], 3, 0)
    with pytest.raises(DataError):
        read_cifar_file(other / "train.bin", CIFAR10)


# ---------------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("pct,n_val", [(20, 102), (10, 51), (50, 256)])
def test_split_sizes(pct, n_val):
    bundle = load(data_cfg(eval_split_percentage=pct), 0, 32)
    assert bundle.val.num_samples == n_val
    assert bundle.train.num_samples == 512 - n_val
    assert not bundle.val_is_test


def test_split_is_seeded_and_disjoint():
    t1, v1 = split_indices(100, 20, seed=5)
    t2, v2 = split_indices(100, 20, seed=5)
    t3, v3 = split_indices(100, 20, seed=6)
    assert np.array_equal(v1, v2) and not np.array_equal(v1, v3)
    assert len(v1) == 20 and set(t1).isdisjoint(v1) and len(set(t1) | set(v1)) == 100
    with pytest.raises(DataError, match="eval_split_percentage"):
        split_indices(100, 100, 0)


def test_zero_split_validates_on_test_and_limit_train():
    bundle = load(data_cfg(eval_split_percentage=0, limit_train=50), 0, 16)
    assert bundle.val is bundle.test and bundle.train.num_samples == 50
    assert len(bundle.train) == 3  # 50 // 16, partial batch dropped


def test_tiny_train_set_keeps_its_only_batch():
    bundle = load(data_cfg(limit_train=10), 0, 32)
    assert bundle.train.last_batch == "keep" and len(bundle.train) == 1
    assert next(iter(bundle.train))[0].shape[0] == 10
    assert bundle.val.last_batch == "keep"
    assert sum(x.shape[0] for x, _ in bundle.val) == bundle.val.num_samples


# -------------------------------------------------------------------------------- determinism


def aug_cfg(**kw):
    return data_cfg(augment=True, **{"mock.shape": [3, 8, 8], "mock.num_train": 100}, **kw)


def test_same_seed_epoch_identical_and_epochs_differ():
    a = load(aug_cfg(), 0, 16).train
    b = load(aug_cfg(), 0, 16).train
    a.set_epoch(0, 3)
    b.set_epoch(0, 0)
    list(b)  # an earlier epoch consumed in this process must not matter
    b.set_epoch(0, 3)
    ba, bb = batches(a), batches(b)
    assert len(ba) == len(a) == 5
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(ba, bb))
    a.set_epoch(0, 4)
    assert not np.array_equal(batches(a)[0][0], ba[0][0])
    a.set_epoch(1, 3)
    assert not np.array_equal(batches(a)[0][1], ba[0][1])


def test_num_workers_identical():
    serial = load(aug_cfg(), 7, 16).train
    threaded = load(aug_cfg(num_workers=2), 7, 16).train
    assert threaded.num_workers == 2
    for epoch in (0, 1):
        serial.set_epoch(7, epoch)
        threaded.set_epoch(7, epoch)
        s, t = batches(serial), batches(threaded)
        assert len(s) == len(t) == 5
        for (x1, y1), (x2, y2) in zip(s, t):
            assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_abandoned_threaded_iteration_is_clean():
    loader = load(aug_cfg(num_workers=3), 0, 8).train
    it = iter(loader)
    next(it)
    it.close()  # shuts the worker pool down
    assert len(batches(loader)) == len(loader)


def test_augmentation_changes_train_not_val():
    plain = load(data_cfg(**{"mock.shape": [3, 8, 8], "mock.num_train": 100}), 0, 16)
    aug = load(aug_cfg(), 0, 16)
    for loader in (plain.train, aug.train):
        loader.set_epoch(0, 1)
    (xp, yp), (xa, ya) = batches(plain.train)[0], batches(aug.train)[0]
    assert np.array_equal(yp, ya)  # same order
    assert not np.array_equal(xp, xa)
    assert aug.val.augment is False and not aug.val.shuffle
    for (x1, _), (x2, _) in zip(batches(plain.val), batches(aug.val)):
        assert np.array_equal(x1, x2)


def test_random_crop_flip_contents():
    rng = np.random.RandomState(0)
    x = rng.rand(64, 2, 6, 6).astype(np.float32)
    out = random_crop_flip(x, np.random.RandomState(1), pad=4, flip=False)
    assert out.shape == x.shape
    # every crop is a shifted window: its nonzero part matches the source somewhere
    for i in range(8):
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                shifted = np.zeros_like(x[i])
                ys, xs = slice(max(0, -dy), min(6, 6 - dy)), slice(max(0, -dx), min(6, 6 - dx))
                shifted[:, ys, xs] = x[i][:, max(0, dy):min(6, 6 + dy), max(0, dx):min(6, 6 + dx)]
                found |= np.array_equal(out[i], shifted)
        assert found
    flipped = random_crop_flip(x, np.random.RandomState(1), pad=0, flip=True)
    mirrored = [np.array_equal(f, s[..., ::-1]) for f, s in zip(flipped, x)]
    kept = [np.array_equal(f, s) for f, s in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54
    # 1-D signals crop along the length
    sig = rng.rand(4, 3, 20).astype(np.float32)
    assert random_crop_flip(sig, np.random.RandomState(0)).shape == sig.shape


def test_array_loader_direct():
    loader = ArrayLoader(np.arange(10, dtype=np.float32).reshape(10, 1, 1), np.arange(10), 4)
    assert len(loader) == 3 and loader.num_samples == 10
    got = batches(loader)
    assert [len(y) for _, y in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate([y for _, y in got]), np.arange(10))
    with pytest.raises(ValueError):
        ArrayLoader(np.zeros((3, 1)), np.zeros(2), 1)
