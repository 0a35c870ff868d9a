"""The ImageNet input path at two data-set sizes: the project's Ray Data stream against a plain torchvision
``DataLoader`` over the same files, with the same decoding and augmentation, side by side in one run.

1. Data: synthetic photos (``tests.archives.photo``: smooth gradients, sensor-like noise, hard-edged shapes;
   about 400x300, JPEG q90) in ImageNet's ``train/<wnid>/`` + ``val/<wnid>/`` layout, run through the
   project's own fetch (index) and ImageNet preprocess (Ray tasks: shorter side 256, JPEG q90; classes
   interleaved into shards), at each size.
2. One epoch of decode + random-resized-crop 224 + flip into training batches of ``--batch``, per size:
   (a) the project's stream (``pipeline.data.manifest.ray_dataset``: shards read in a new seeded order each
       epoch, decoding in Ray Data tasks, each worker's bounded shuffle buffer ``train.shuffle_buffer``,
       through ``pipeline.train.engine.StreamData`` as a training worker reads it, via ``streaming_split``);
   (b) ``torch.utils.data.DataLoader(shuffle=True, num_workers=<cores>)`` over a map-style data set of the same
       Parquet shards, decoding each image with the same function (``pipeline.data.jpeg.decode_images``);
   (c) with ``--global-shuffle``: the stream as it was before (``Dataset.random_shuffle()`` every epoch).
   Each path is built and warmed up by one epoch (the first pays start-up), then one epoch of each in turns
   for ``--rounds`` rounds (medians: this kind of machine drifts 10-20 % in speed over tens of seconds).
   Printed: images/s and per core, the ratio (a)/(b) (goal >= 0.9), the peak object-store memory and the
   bytes spilled to disk (polled from the raylet; goals: peak at the larger size <= 1.2x the smaller, nothing
   spilled).
3. Shuffle quality: the mean label entropy of a training batch (bits), for a full random permutation, the
   stream on interleaved shards (what preprocess writes) and the stream on class-sorted shards
   (``preprocess.interleave: 0``, the worst case for a bounded buffer).
4. Decoders on the stored JPEGs: ``torchvision.io.decode_jpeg`` + tensor ``resized_crop`` (what the pipeline
   trains with), Pillow at full resolution (what it used before), Pillow with reduced-size (draft) decoding
   where the crop allows it; and whether each gives the evaluation view bit-equal to torchvision's reference
   (Pillow decode + ``Resize(256)`` + ``CenterCrop(224)``). Evaluation keeps Pillow, the reference itself.

The stream runs under the object-store cap the train stage sets (``compute.stream_memory_mb``,
``--stream-memory-mb``), so its memory is flat in the data set's size.

    python benchmarks/stream.py [--sizes 10000 40000] [--classes 100] [--batch 64] [--global-shuffle]
    python benchmarks/stream.py --smoke   # 2 tiny sizes, 64 px images: seconds, for CI
"""

from __future__ import annotations

import argparse
import gc
import io
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import ComputeCfg, ImageNetDataCfg  # noqa: E402
from pipeline.data.fetch import fetch_dataset  # noqa: E402
from pipeline.data.jpeg import crop_box, decode_images, eval_view  # noqa: E402
from pipeline.data.manifest import load_manifest, ray_dataset, read_table, stream_options  # noqa: E402
from pipeline.data.preprocess import preprocess_dataset  # noqa: E402
from pipeline.train.engine import StreamData  # noqa: E402
from tests.archives import photo, wnids  # noqa: E402

CORES = os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------------
# Synthetic photos in ImageNet's folder layout


def _write(job: tuple[str, int, int, int]) -> int:
    path, seed, w, h = job
    blob = photo(np.random.default_rng(seed), w, h)
    Path(path).write_bytes(blob)
    return len(blob)


def make_source(root: Path, classes: int, per_class: int, val_per_class: int, size: tuple[int, int]) -> float:
    """``train/<wnid>/`` and ``val/<wnid>/`` photos (sizes jittered around ``size``); mean file size (bytes)."""
    jobs, rng = [], np.random.default_rng(0)
    for c, w in enumerate(wnids(classes)):
        for split, n in (("train", per_class), ("val", val_per_class)):
            (root / split / w).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                jw, jh = (int(v * rng.uniform(0.8, 1.25)) for v in size)
                name = f"{w}_{k + 1}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * n + k + 1:08d}.JPEG"
                jobs.append((str(root / split / w / name), len(jobs), jw, jh))
    with mp.Pool(CORES) as pool:
        sizes = pool.map(_write, jobs, chunksize=64)
    return float(np.mean(sizes))


def preprocess(src: Path, out: Path, *, per_class: int | None, resize: int, crop: int, interleave: int) -> Path:
    """The project's fetch (index) and ImageNet preprocess of ``src``, ``per_class`` train images per class."""
    cfg = ImageNetDataCfg.model_validate({
        "kind": "imagenet",
        "fetch": {"source": str(src), "layout": "folders"},
        "preprocess": {"resize": resize, "image_size": crop, "shard_size": 1000, "interleave": interleave,
                       "subset": {"train": per_class, "test": None}},
    })  # fmt: skip
    fetch_dataset("imagenet", cfg, out / "raw")
    preprocess_dataset(out / "raw", out / "data", cfg.preprocess)
    return out / "data"


# ---------------------------------------------------------------------------------------------------------
# Object-store memory, polled from the raylet


class StoreWatch:
    """Peak object-store bytes in use and bytes spilled, sampled every ``every_s`` seconds while active (Ray's
    own node statistics: what ``ray memory --stats-only`` prints)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self.spilled = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def stats():
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        return get_memory_info_reply(get_state_from_address()).store_stats

    def _run(self) -> None:
        base = self.stats().spilled_bytes_total
        while not self._stop.is_set():
            s = self.stats()
            self.peak = max(self.peak, s.object_store_bytes_used)
            self.spilled = s.spilled_bytes_total - base
            self._stop.wait(self.every_s)

    def __enter__(self) -> StoreWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------------------
# The two input paths


class ShardImages(torch.utils.data.Dataset):
    """The Parquet shards as a map-style data set: image i decoded and augmented on its own, in the
    DataLoader's worker processes (each opens the shards memory-mapped once)."""

    def __init__(self, data_dir: Path, size: int) -> None:
        man = load_manifest(data_dir)
        self.dir, self.size, self.shards = data_dir, size, man.shards("train")
        counts = [f["rows"] for f in man.files["train"]["shards"]]
        self.offsets = np.cumsum([0, *counts])
        self._tables: list | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if self._tables is None:
            self._tables = [read_table(self.dir, s, columns=["image", "label"]) for s in self.shards]
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        t = self._tables[k]
        j = i - int(self.offsets[k])
        blob = t.column("image")[j].as_py()
        rng = np.random.default_rng()
        return decode_images([blob], self.size, None, rng)[0], int(t.column("label")[j].as_py())


def dataloader_batches(data_dir: Path, size: int, batch: int) -> Callable[[], Iterator[tuple[torch.Tensor, ...]]]:
    loader = torch.utils.data.DataLoader(
        ShardImages(data_dir, size), batch_size=batch, shuffle=True, num_workers=CORES, drop_last=True
    )
    return lambda: iter(loader)


def stream_batches(data_dir: Path, batch: int, buffer: int, *, global_shuffle: bool = False):
    """The project's stream as one training worker reads it (``StreamData.batches``), through
    ``streaming_split``, the path Ray Train's ``get_dataset_shard`` takes. ``global_shuffle``: the stream as
    it was before (every epoch a global ``random_shuffle`` of the encoded rows, then decoding; no buffer)."""
    man = load_manifest(data_dir)
    ds = global_shuffle_dataset(data_dir) if global_shuffle else ray_dataset(str(data_dir), "train", man, augment=True)
    (shard,) = ds.streaming_split(1)
    data = StreamData(shard)
    return lambda: data.batches(
        batch, torch.device("cpu"), drop_last=True, shuffle_buffer=0 if global_shuffle else buffer
    )


def global_shuffle_dataset(data_dir: Path):
    """``ray_dataset`` as the project had it before: ``read_parquet(...).random_shuffle().map_batches(decode)``."""
    import ray.data

    man = load_manifest(data_dir)
    size = man.image_shape[0]

    def decode(batch):
        images = decode_images(list(batch["image"]), size, None, np.random.default_rng())
        return {"image": images, "label": batch["label"].astype(np.int64)}

    paths = [str(data_dir / p) for p in man.shards("train")]
    return (
        ray.data.read_parquet(paths, columns=["image", "label"])
        .random_shuffle()
        .map_batches(decode, batch_format="numpy")
    )


def epoch(batches: Callable[[], Iterator[tuple[torch.Tensor, ...]]]) -> tuple[float, list[np.ndarray]]:
    """Seconds of one epoch and the labels of each batch."""
    t0, labels = time.perf_counter(), []
    for _, y in batches():
        labels.append(np.asarray(y))
    return time.perf_counter() - t0, labels


def entropy(labels: list[np.ndarray]) -> float:
    """Mean Shannon entropy (bits) of the label distribution within a batch."""
    out = []
    for y in labels:
        p = np.bincount(y) / len(y)
        p = p[p > 0]
        out.append(float(-(p * np.log2(p)).sum()))
    return statistics.mean(out)


def full_shuffle_entropy(data_dir: Path, batch: int) -> float:
    labels = np.concatenate([read_table(data_dir, p, columns=["label"]).column("label").to_numpy()
                             for p in load_manifest(data_dir).shards("train")])  # fmt: skip
    perm = np.random.default_rng(0).permutation(labels)
    return entropy([perm[i : i + batch] for i in range(0, len(perm) - batch + 1, batch)])


# ---------------------------------------------------------------------------------------------------------
# Decoders


def decode_pillow(blobs: list[bytes], size: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow at full resolution, the crop resized with ``Image.resize(box=...)`` (bilinear) + flip: what
    ``decode_images`` did before it took ``torchvision.io``; (N, size, size, 3)."""
    from PIL import Image

    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, b in enumerate(blobs):
        with Image.open(io.BytesIO(b)) as im:
            img = im.convert("RGB")
        x0, y0, cw, ch = crop_box(rng, *img.size)
        arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out


def decode_pil_draft(blobs: list[bytes], size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Pillow, decoding at 1/2, 1/4 or 1/8 scale (JPEG DCT scaling) when the crop still has >= ``size`` pixels
    on each side at that scale; (N, size, size, 3) like ``decode_images``, and how many could use a reduced
    scale."""
    from PIL import Image

    out, reduced = np.empty((len(blobs), size, size, 3), np.uint8), 0
    for i, b in enumerate(blobs):
        with Image.open(io.BytesIO(b)) as im:
            w, h = im.size
            x0, y0, cw, ch = crop_box(rng, w, h)
            scale = 1
            while scale < 8 and min(cw, ch) // (2 * scale) >= size:
                scale *= 2
            if scale > 1:
                im.draft("RGB", (w // scale, h // scale))
                reduced += 1
            img = im.convert("RGB")
        f = img.size[0] / w
        arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR,
                                    box=(x0 * f, y0 * f, (x0 + cw) * f, (y0 + ch) * f)))  # fmt: skip
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out, reduced


def eval_bit_equal(blobs: list[bytes], resize: int, size: int) -> dict[str, bool]:
    """Does each decoder give the reference evaluation view (Pillow decode, Resize + CenterCrop on the PIL
    image: torchvision's references/classification) bit for bit?"""
    from PIL import Image
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    same = {"Pillow": True, "torchvision.io": True}
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            ref = np.asarray(eval_view(im.convert("RGB"), resize, size))
        ours = decode_images([b], size, resize)[0]
        t = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
        tv = F.center_crop(F.resize(t, [resize], antialias=True), [size, size]).permute(1, 2, 0).numpy()
        same["Pillow"] &= bool(np.array_equal(ours, ref))
        same["torchvision.io"] &= bool(np.array_equal(tv, ref))
    return same


def bench_decoders(data_dir: Path, size: int, resize: int, n: int) -> None:
    blobs = read_table(data_dir, load_manifest(data_dir).shards("train")[0], columns=["image"]).column("image")
    blobs = blobs.to_pylist()[:n]
    rng = np.random.default_rng(0)
    runs = {
        "torchvision.io.decode_jpeg + resized_crop (the pipeline's)": lambda: decode_images(blobs, size, None, rng),
        "Pillow, full resolution": lambda: decode_pillow(blobs, size, rng),
        "Pillow, reduced-size (draft) decoding": lambda: decode_pil_draft(blobs, size, rng),
    }
    torch.set_num_threads(1)  # one decoding process per core, as in both input paths
    print(f"4. JPEG decoders, decode + random-resized-crop {size} + flip, {len(blobs)} stored images, 1 thread")
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):  # in turns, best of three: a transient load hits every decoder alike
        for label, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    for label, t in times.items():
        print(f"   {label:60s} {len(blobs) / min(t):8,.0f} images/s per core")
    _, reduced = decode_pil_draft(blobs, size, np.random.default_rng(1))
    print(f"   crops that allow a reduced scale (>= 2x{size} px on each side): {reduced} of {len(blobs)}")
    same = eval_bit_equal(blobs[: min(len(blobs), 32)], resize, size)
    print("   evaluation view bit-equal to the reference (Pillow + Resize + CenterCrop): "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------


def bench_size(
    data_dir: Path, *, size: int, batch: int, buffer: int, global_shuffle: bool, rounds: int
) -> dict[str, dict[str, float]]:
    """Each input path made once and warmed up by one epoch (start-up), then one epoch of each in turns for
    ``rounds`` rounds, so a drift of the machine's speed hits every path alike; {path: {rate (median), ratio
    (median of the rounds' stream / DataLoader), peak, spilled, entropy}}."""
    paths = {"stream": lambda: stream_batches(data_dir, batch, buffer),
             "DataLoader": lambda: dataloader_batches(data_dir, size, batch)}  # fmt: skip
    if global_shuffle:
        paths["global shuffle (before)"] = lambda: stream_batches(data_dir, batch, buffer, global_shuffle=True)
    made = {name: make() for name, make in paths.items()}
    for batches in made.values():
        epoch(batches)
    rates: dict[str, list[float]] = {k: [] for k in made}
    out = {k: {"peak": 0.0, "spilled": 0.0, "entropy": 0.0} for k in made}
    for _ in range(rounds):
        for name, batches in made.items():
            gc.collect()
            with StoreWatch() as watch:
                seconds, labels = epoch(batches)
            rates[name].append(sum(len(y) for y in labels) / seconds)
            o = out[name]
            o["peak"], o["spilled"] = max(o["peak"], watch.peak), max(o["spilled"], watch.spilled)
            o["entropy"] = entropy(labels)
    for name, r in rates.items():
        out[name]["rate"] = statistics.median(r)
        out[name]["ratio"] = statistics.median(a / b for a, b in zip(r, rates["DataLoader"], strict=True))
        out[name]["range"] = (min(r), max(r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 40_000], help="train images, two sizes")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--buffer", type=int, default=2000, help="the stream's shuffle buffer (train.shuffle_buffer)")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs of each path, in turns")
    ap.add_argument("--stream-memory-mb", type=int, default=ComputeCfg().stream_memory_mb,
                    help="the stream's object-store cap (compute.stream_memory_mb)")  # fmt: skip
    ap.add_argument("--global-shuffle", action="store_true", help="also the stream as it was: a global shuffle")
    ap.add_argument("--smoke", action="store_true", help="2 tiny sizes, 64 px images (CI)")
    a = ap.parse_args()
    src_size, resize, crop = (400, 300), 256, 224
    if a.smoke:
        a.sizes, a.classes, a.batch, a.buffer, a.rounds = [64, 128], 4, 16, 64, 1
        src_size, resize, crop = (96, 72), 64, 56
    import ray
    import ray.data

    ray.init(num_cpus=CORES, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options = stream_options(a.stream_memory_mb)  # as Ray Train applies it to a worker's shard
    work = Path(tempfile.mkdtemp(prefix="attncnn-stream-"))
    per_class = [n // a.classes for n in a.sizes]
    t0 = time.perf_counter()
    mean_bytes = make_source(work / "src", a.classes, max(per_class), 2, src_size)
    print(f"data: {a.classes} classes, photos ~{src_size[0]}x{src_size[1]} ({mean_bytes / 1e3:.0f} KB each), made in "
          f"{time.perf_counter() - t0:.0f} s; stored at shorter side {resize}, {crop} px crops, batch {a.batch}, "
          f"{CORES} cores")  # fmt: skip
    results, dirs = {}, {}
    for n, k in zip(a.sizes, per_class, strict=True):
        t0 = time.perf_counter()
        dirs[n] = preprocess(work / "src", work / f"p{n}", per_class=k, resize=resize, crop=crop, interleave=10)
        images = load_manifest(dirs[n]).num_train
        print(f"\n{images:,} train images: the project's preprocess in {time.perf_counter() - t0:.0f} s")
        results[n] = r = bench_size(dirs[n], size=crop, batch=a.batch, buffer=a.buffer,
                                    global_shuffle=a.global_shuffle, rounds=a.rounds)  # fmt: skip
        for name, m in r.items():
            print(f"   {name:24s} {m['rate']:8,.0f} images/s = {m['rate'] / CORES:6,.0f} per core   peak object store "
                  f"{m['peak'] / 2**20:7.1f} MiB   spilled {m['spilled'] / 2**20:5.1f} MiB")  # fmt: skip
        lo, hi = r["stream"]["range"]
        print(f"   ratio stream / DataLoader: {r['stream']['ratio']:.3f} (goal >= 0.9; median of {a.rounds} rounds' "
              f"ratios; the stream's epochs {lo:,.0f}-{hi:,.0f} images/s)")  # fmt: skip
    small, large = a.sizes
    growth = results[large]["stream"]["peak"] / max(results[small]["stream"]["peak"], 1)
    spilled = max(m["spilled"] for r in results.values() for m in r.values())
    print(f"\nmemory: stream peak object store at {large:,} / at {small:,} = {growth:.2f}x (goal <= 1.2); "
          f"spilled at most {spilled / 2**20:.1f} MiB (goal: none)")  # fmt: skip
    if a.global_shuffle:
        g = results[large]["global shuffle (before)"]["peak"] / max(
            results[small]["global shuffle (before)"]["peak"], 1
        )
        print(f"        global shuffle (before): peak at {large:,} / at {small:,} = {g:.2f}x")
    sorted_dir = preprocess(work / "src", work / "sorted", per_class=per_class[0], resize=resize, crop=crop,
                            interleave=0)  # fmt: skip
    full = full_shuffle_entropy(dirs[small], a.batch)
    mixed = results[small]["stream"]["entropy"]
    sorted_h = bench_size(sorted_dir, size=crop, batch=a.batch, buffer=a.buffer, global_shuffle=False, rounds=1)
    print(f"3. shuffle quality at {small:,} images ({a.classes} classes), mean label entropy of a batch of {a.batch}:")
    print(f"   full random permutation            {full:5.2f} bits")
    print(f"   stream, interleaved shards         {mixed:5.2f} bits ({100 * mixed / full:.0f} % of a full shuffle's)")
    h = sorted_h["stream"]["entropy"]
    print(f"   stream, class-sorted shards        {h:5.2f} bits ({100 * h / full:.0f} %: the worst case, interleave 0)")
    bench_decoders(dirs[small], crop, resize, 64 if a.smoke else 300)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
