"""Streamed data (recordio, image_folder) and `lightnas data check/pack`, on real images: the
scikit-learn digits, written in the test as PNG files and as a RecordIO file (mx.recordio)."""
from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from conftest import TINY_ENAS, assert_same_metrics, kill_during_epoch_two, run_cli, write_config
from lightnas_cli.config.schema import DataConfig
from lightnas_cli.data import describe, load
from lightnas_cli.data.recordio import MAGIC_BYTES, RecordFile
from lightnas_cli.errors import ConfigError, DataError

DIGITS = load_digits()
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit(i: int) -> np.ndarray:
    """Digit i as a 16x16 uint8 grey image (8x8 upsampled by 2, values 0..255)."""
    return np.kron(DIGITS.images[i] * (255 / 16), np.ones((2, 2))).round().astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_rec(prefix: Path, indices, labels=None, payloads=None) -> Path:
    """A .rec/.idx of digit PNGs written with MXNet's own writer (labels: digit targets)."""
    rec, idx = prefix.with_suffix(".rec"), prefix.with_suffix(".idx")
    writer = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    for k, i in enumerate(indices):
        label = float(DIGITS.target[i] if labels is None else labels[k])
        data = png(digit(i)) if payloads is None or payloads[k] is None else payloads[k]
        writer.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, label, k, 0), data))
    writer.close()
    return rec


def write_folder(root: Path, indices) -> Path:
    for i in indices:
        folder = root / NAMES[DIGITS.target[i]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png(digit(i)))
    return root


def data_cfg(**values):
    cfg = OmegaConf.structured(DataConfig)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def rec_cfg(rec: Path, **values):
    return data_cfg(name="recordio", train_rec=str(rec), image_size=16, channels=1, **values)


def batches(loader):
    return [(x.asnumpy(), y.asnumpy()) for x, y in loader]


# ------------------------------------------------------------------------------ RecordIO files


def test_record_file_reads_split_records(tmp_path: Path) -> None:
    # A payload holding the magic number at a 4-byte-aligned place is split by MXNet's writer
    # into continuation parts; the reader must join them back with the magic number.
    tricky = b"\x89PNG\r\n\x1a\n" + MAGIC_BYTES + b"rest" + MAGIC_BYTES + b"x" * 5
    rec = write_rec(tmp_path / "s", [0, 1, 2], payloads=[None, tricky, None])
    records = RecordFile(rec)
    assert len(records) == 3
    first_part = struct.unpack("<II", rec.read_bytes()[records.offsets[1]:][:8])[1] >> 29
    assert first_part == 1, "the writer did not split the record: the test lost its point"
    header, image = records.read(1)
    assert image == tricky and header.label == DIGITS.target[1] and header.image_kind == "png"
    assert records.read(2)[1] == png(digit(2))
    assert records.header(1).label == DIGITS.target[1]


def test_recordio_describe_split_and_exact_images(tmp_path: Path) -> None:
    rec = write_rec(tmp_path / "d", range(100))
    spec = describe(rec_cfg(rec))
    assert (spec.name, spec.shape, spec.classes, spec.layout) == ("recordio", (1, 16, 16), 10,
                                                                  "NCHW")
    bundle = load(rec_cfg(rec, eval_split_percentage=20), seed=1, batch_size=16)
    assert bundle.test is None and bundle.val.num_samples == 20 and bundle.train.num_samples == 80
    # Validation images are the stored pixels (16x16 PNG, no crop or scaling), normalised.
    x, y = np.concatenate([b[0] for b in batches(bundle.val)]), \
        np.concatenate([b[1] for b in batches(bundle.val)])
    positions = bundle.val.dataset.source.positions
    expected = np.stack([digit(i) for i in positions])[:, None] / 255.0
    restored = x * bundle.std.reshape(1, -1, 1, 1) + bundle.mean.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(restored, expected, atol=1e-5)
    np.testing.assert_array_equal(y, DIGITS.target[positions])


def test_streamed_order_is_a_function_of_seed_and_epoch(tmp_path: Path) -> None:
    rec = write_rec(tmp_path / "d", range(96))
    cfg = rec_cfg(rec, eval_split_percentage=0, test_split_percentage=25, augment=True)
    a = load(cfg, seed=5, batch_size=16)
    b = load(OmegaConf.merge(cfg, {"num_workers": 2}), seed=5, batch_size=16)
    try:
        a.train.set_epoch(5, 3)
        b.train.set_epoch(5, 3)
        first, parallel = batches(a.train), batches(b.train)
        assert len(first) == 72 // 16
        for (xa, ya), (xb, yb) in zip(first, parallel):  # any worker count, same batches
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        a.train.set_epoch(5, 4)
        other = batches(a.train)
        assert not np.array_equal(first[0][1], other[0][1])  # a new epoch shuffles anew
        a.train.set_epoch(5, 3)
        again = batches(a.train)
        assert all(np.array_equal(p[0], q[0]) for p, q in zip(first, again))
        # Augmentation (random resized crop + flip) changes the training images, same order.
        plain = load(OmegaConf.merge(cfg, {"augment": False}), seed=5, batch_size=16)
        plain.train.set_epoch(5, 3)
        unaugmented = batches(plain.train)
        np.testing.assert_array_equal(unaugmented[0][1], first[0][1])
        assert not np.allclose(unaugmented[0][0], first[0][0])
        np.testing.assert_array_equal(batches(a.test)[0][0], batches(b.test)[0][0])
    finally:
        b.train.close()
        b.test.close()


def test_image_folder_layouts_and_classes(tmp_path: Path) -> None:
    flat = write_folder(tmp_path / "flat", range(60))
    (flat / "one" / "notes.txt").write_text("not an image")
    spec = describe(data_cfg(name="image_folder", dir=str(flat), image_size=16, channels=1))
    assert spec.classes == 10 and spec.shape == (1, 16, 16)
    cfg = data_cfg(name="image_folder", dir=str(flat), image_size=16, channels=1,
                   test_split_percentage=20, eval_split_percentage=25)
    one = load(cfg, seed=1, batch_size=8)
    two = load(cfg, seed=2, batch_size=8)
    assert (one.train.num_samples, one.val.num_samples, one.test.num_samples) == (36, 12, 12)
    # The test split is the same files whatever the seed; validation follows the seed.
    assert one.test.dataset.source.files == two.test.dataset.source.files
    assert one.val.dataset.source.files != two.val.dataset.source.files
    # Labels are the positions of the sorted class folder names.
    names = sorted(NAMES)
    for path, label in zip(one.test.dataset.source.files, one.test.dataset.source.labels):
        assert names[label] == Path(path).parent.name

    split = tmp_path / "split"
    write_folder(split / "train", range(40))
    write_folder(split / "val", range(40, 60))
    write_folder(split / "test", range(60, 80))
    bundle = load(data_cfg(name="image_folder", dir=str(split), image_size=12, resize=16,
                           channels=3), seed=0, batch_size=8)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == \
        (40, 20, 20)
    x, _ = batches(bundle.val)[0]
    assert x.shape == (8, 3, 12, 12)  # grey PNGs decoded as RGB, center crop 12 of 16


def _corrupt(kind: str, tmp_path: Path):
    """A data config whose data has one defect of `kind`, and a phrase its error names."""
    if kind == "missing_idx":
        rec = write_rec(tmp_path / "d", range(40))
        rec.with_suffix(".idx").unlink()
        return rec_cfg(rec), "index"
    if kind == "truncated_rec":
        rec = write_rec(tmp_path / "d", range(40))
        rec.write_bytes(rec.read_bytes()[:-100])
        return rec_cfg(rec), "truncated"
    if kind == "bad_image":
        payloads = [None] * 40
        payloads[7] = b"not an image"
        rec = write_rec(tmp_path / "d", range(40), payloads=payloads)
        return rec_cfg(rec), "record 7"
    if kind == "damaged_image":  # a PNG signature, then garbage: only decoding finds it
        payloads = [None] * 40
        payloads[3] = png(digit(3))[:30]
        rec = write_rec(tmp_path / "d", range(40), payloads=payloads)
        return rec_cfg(rec, verify="decode"), "record 3 .* damaged"
    if kind == "labels_beyond_classes":
        rec = write_rec(tmp_path / "d", range(40))
        return rec_cfg(rec, classes=5), "outside 0..4"
    if kind == "empty_class_folder":
        root = write_folder(tmp_path / "f", range(40))
        (root / "eleven").mkdir()
        return data_cfg(name="image_folder", dir=str(root), image_size=16), "eleven"
    raise AssertionError(kind)


DEFECTS = ["missing_idx", "truncated_rec", "bad_image", "damaged_image", "labels_beyond_classes",
           "empty_class_folder"]


@pytest.mark.parametrize("kind", DEFECTS)
def test_defects_fail_before_training(kind: str, tmp_path: Path) -> None:
    cfg, phrase = _corrupt(kind, tmp_path)
    with pytest.raises(DataError, match=phrase):
        load(cfg, seed=0, batch_size=8)


def test_streamed_config_errors(tmp_path: Path) -> None:
    rec = write_rec(tmp_path / "d", range(20))
    with pytest.raises(ConfigError, match="image_size is required"):
        describe(data_cfg(name="recordio", train_rec=str(rec)))
    with pytest.raises(ConfigError, match="Did you mean 'random_resized'"):
        load(rec_cfg(rec, train_crop="random_resize"), seed=0, batch_size=8)
    with pytest.raises(ConfigError, match="no validation split"):
        load(rec_cfg(rec, eval_split_percentage=0), seed=0, batch_size=8)


# --------------------------------------------------------------------------------- the CLI


def search_config(data: dict, epochs: int = 1) -> dict:
    return {**TINY_ENAS, "data": data, "train": {**TINY_ENAS["train"], "epochs": epochs}}


def test_cli_defects_exit_2_with_one_line_and_create_nothing(tmp_path: Path) -> None:
    for kind in ("missing_idx", "truncated_rec", "bad_image", "labels_beyond_classes",
                 "empty_class_folder"):
        folder = tmp_path / kind
        folder.mkdir()
        cfg, phrase = _corrupt(kind, folder)
        config = write_config(folder, search_config(OmegaConf.to_container(cfg)))
        before = sorted(p.name for p in folder.rglob("*"))
        result = run_cli(["search", "-c", str(config)], folder)
        assert result.returncode == 2, (kind, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], \
            (kind, result.stderr)
        assert sorted(p.name for p in folder.rglob("*")) == before, kind  # nothing created


def test_cli_image_folder_search_and_check(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "digits", range(200))
    data = {"name": "image_folder", "dir": str(root), "image_size": 16, "channels": 1,
            "test_split_percentage": 20, "augment": True, "train_crop": "random", "resize": 18,
            "flip": False}
    config = write_config(tmp_path, search_config(data))
    checked = run_cli(["data", "check", "-c", str(config)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "train: 128 samples" in checked.stdout and "test: 40 samples" in checked.stdout
    assert "images/s" in checked.stdout and "problems: none found" in checked.stdout
    result = run_cli(["search", "-c", str(config), "run.name=folder"], tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "trainings" / "folder"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["dataset"] == "image_folder"
    assert "test_accuracy" in status


def test_cli_check_lists_problems(tmp_path: Path) -> None:
    payloads = [None] * 30
    payloads[4] = payloads[9] = b"garbage"
    rec = write_rec(tmp_path / "d", range(30), payloads=payloads)
    config = write_config(tmp_path, search_config({"name": "recordio", "train_rec": str(rec),
                                                   "image_size": 16, "channels": 1}))
    result = run_cli(["data", "check", "-c", str(config)], tmp_path)
    assert result.returncode == 2
    assert "problems: 2" in result.stdout and "record 4" in result.stdout \
        and "record 9" in result.stdout
    assert result.stderr.strip().startswith("error: 2 problem(s)")
    assert not (tmp_path / "trainings").exists()


def test_cli_pack_matches_the_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "digits", range(50))
    result = run_cli(["data", "pack", str(root), str(tmp_path / "packed")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "50 images" in result.stdout and "eight, five, four" in result.stdout
    again = run_cli(["data", "pack", str(root), str(tmp_path / "packed")], tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    common = dict(image_size=16, channels=1, eval_split_percentage=0, test_split_percentage=30)
    packed = load(data_cfg(name="recordio", train_rec=str(tmp_path / "packed.rec"), **common),
                  seed=0, batch_size=10)
    folder = load(data_cfg(name="image_folder", dir=str(root), **common), seed=0, batch_size=10)
    assert packed.test.num_samples == folder.test.num_samples == 15
    for (xa, ya), (xb, yb) in zip(batches(packed.test), batches(folder.test)):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)

    (root / "one" / "9999.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    broken = run_cli(["data", "pack", str(root), str(tmp_path / "other")], tmp_path)
    assert broken.returncode == 2 and "9999.png" in broken.stderr
    assert not list(tmp_path.glob("other*")) and not list(tmp_path.glob(".other*"))


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split() if (task / "children").exists() else []
        found.extend(int(t) for t in text)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_recordio_search_resumes_exactly_after_sigkill(tmp_path: Path) -> None:
    rec = write_rec(tmp_path / "digits", range(400))
    data = {"name": "recordio", "train_rec": str(rec), "image_size": 16, "channels": 1,
            "augment": True, "flip": False, "num_workers": 2}
    config = write_config(tmp_path, search_config(data, epochs=2))
    full = run_cli(["search", "-c", str(config), "run.name=full"], tmp_path)
    assert full.returncode == 0, full.stderr

    run = tmp_path / "trainings" / "killed"
    workers = kill_during_epoch_two(["search", "-c", str(config), "run.name=killed"], tmp_path,
                                    run, before_kill=_children)
    # The decoding workers die with the training process instead of lingering.
    assert workers, "no worker processes were running"
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers)

    resumed = run_cli(["resume", "killed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    def metrics(name: str) -> list[dict]:
        path = tmp_path / "trainings" / name / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    reference, continued = metrics("full"), metrics("killed")
    assert [r["epoch"] for r in continued] == [1, 2]
    assert_same_metrics(continued, reference)
    arch = "logs/architectures/epoch_2.json"
    assert json.loads((run / arch).read_text()) == \
        json.loads((tmp_path / "trainings" / "full" / arch).read_text())


def test_label_problems_do_not_pile_up_across_loads(tmp_path: Path) -> None:
    rec = write_rec(tmp_path / "d", range(40))
    messages = []
    for _ in range(2):  # the header scan is cached per file; its problems must not accumulate
        with pytest.raises(DataError) as info:
            load(rec_cfg(rec, classes=9), seed=0, batch_size=8)
        messages.append(str(info.value))
    nines = int((DIGITS.target[:40] == 9).sum())
    assert messages[0] == messages[1] and f"({nines - 1} more problem(s)" in messages[0]
