"""Can the streamed RecordIO pipeline keep MeliusNet-22 at 224x224 fed on this machine?

Builds a RecordIO file (with `lightnas data pack`'s code) of JPEG photos cut from
scikit-learn's two sample photographs (427x640), shorter side 256..375 like a packed ImageNet,
then measures in one run, side by side:
- pipeline_images_per_s: decoded + augmented images/s at 224x224 (random resized crop, flip,
  mean/std normalisation) through LightNAS's loader (`data.name: recordio`, Gluon DataLoader,
  `--workers` processes), one pass over the file after the first batch;
- image_record_iter_images_per_s: the same work by `mx.io.ImageRecordIter` (C++ threads), the
  alternative the loader was chosen against;
- training_images_per_s: training steps (forward, backward, Adam update) of MeliusNet-22,
  1000 classes, 224x224, hybridized;
- pipeline_vs_training: the first over the third. Target >= 2 (the data never makes training
  wait).

    python benchmarks/data_pipeline.py [--images 512] [--batch 32] [--workers N]
                                       [--train-batch 8] [--train-steps 3]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

import bmxnet_models  # noqa: E402
from lightnas_cli.config.schema import DataConfig  # noqa: E402
from lightnas_cli.data import load  # noqa: E402
from lightnas_cli.data.pack import pack_folder  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs (quality 90) in 10 class folders: random crops of the two sample photos,
    scaled so the shorter side is 256..375 pixels."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.RandomState(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.randint(h // 2, h + 1), rng.randint(w // 2, w + 1)
        y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
        image = Image.fromarray(photo[y:y + ch, x:x + cw])
        short = rng.randint(256, 376)
        scale = short / min(ch, cw)
        image = image.resize((round(cw * scale), round(ch * scale)), Image.BILINEAR)
        target = folder / f"class{i % 10}"
        target.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        (target / f"{i:05d}.jpg").write_bytes(buffer.getvalue())


def pipeline_rate(rec: Path, batch: int, workers: int) -> float:
    cfg = OmegaConf.structured(DataConfig)
    cfg.merge_with({"name": "recordio", "train_rec": str(rec), "image_size": 224, "augment": True,
                    "train_crop": "random_resized", "flip": True, "mean": MEAN, "std": STD,
                    "val_rec": str(rec), "eval_split_percentage": 0, "num_workers": workers,
                    "verify": "none"})
    bundle = load(cfg, seed=0, batch_size=batch)
    loader = bundle.train
    loader.set_epoch(0, 1)
    images, started = 0, None
    for data, _ in loader:
        data.wait_to_read()
        if started is None:  # the first batch includes starting the workers
            started = time.perf_counter()
            continue
        images += data.shape[0]
    seconds = time.perf_counter() - started
    loader.close()
    return images / seconds


def record_iter_rate(rec: Path, batch: int, threads: int) -> float:
    it = mx.io.ImageRecordIter(
        path_imgrec=str(rec), path_imgidx=str(rec.with_suffix(".idx")), data_shape=(3, 224, 224),
        batch_size=batch, shuffle=True, seed=0, random_resized_crop=True, min_random_area=0.08,
        max_random_area=1.0, min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True,
        mean_r=MEAN[0] * 255, mean_g=MEAN[1] * 255, mean_b=MEAN[2] * 255, std_r=STD[0] * 255,
        std_g=STD[1] * 255, std_b=STD[2] * 255, preprocess_threads=threads, inter_method=1,
        round_batch=False)
    images, started = 0, None
    for item in it:
        item.data[0].wait_to_read()
        if started is None:
            started = time.perf_counter()
            continue
        images += item.data[0].shape[0] - item.pad
    return images / (time.perf_counter() - started)


def training_rate(batch: int, steps: int) -> float:
    mx.random.seed(0)
    net = bmxnet_models.get_model("meliusnet22", classes=1000)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize()
    rng = np.random.RandomState(0)
    data = nd.array(rng.normal(size=(batch, 3, 224, 224)))
    label = nd.array(rng.randint(0, 1000, size=batch))
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step() -> None:
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(batch)
        nd.waitall()

    step()  # shapes, graph and memory set up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="pipeline batch size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes of LightNAS's loader (threads of the iterator)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lightnas-bench-") as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.images)
        pack_folder(folder, Path(tmp) / "photos")
        rec = Path(tmp) / "photos.rec"
        mean_bytes = rec.stat().st_size / args.images
        pipeline = pipeline_rate(rec, args.batch, args.workers)
        record_iter = record_iter_rate(rec, args.batch, args.workers)
    training = training_rate(args.train_batch, args.train_steps)
    print(json.dumps({
        "pipeline_images_per_s": round(pipeline, 1),
        "image_record_iter_images_per_s": round(record_iter, 1),
        "training_images_per_s": round(training, 2),
        "pipeline_vs_training": round(pipeline / training, 1),
        "pipeline_vs_image_record_iter": round(pipeline / record_iter, 3),
        "setup": {"images": args.images, "mean_jpeg_bytes": round(mean_bytes),
                  "output": [3, 224, 224], "pipeline_batch": args.batch,
                  "workers": args.workers, "train_model": "meliusnet22",
                  "train_batch": args.train_batch, "train_steps": args.train_steps,
                  "device": "cpu", "cores": os.cpu_count(),
                  "omp_threads": os.environ.get("OMP_NUM_THREADS")},
    }, indent=2))


if __name__ == "__main__":
    main()
