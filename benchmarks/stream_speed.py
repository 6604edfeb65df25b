"""Throughput of the streamed ImageNet input pipeline on the host, images per second.

`jaxquant.data.StreamingDataset` reads each example by index, decodes its JPEG and applies
RandomResizedCrop(224) + flip (training) or resize 256 + centre crop 224 (evaluation) in a pool
of ``data_workers`` threads. No ImageNet is needed: a stand-in source holds ``--images`` random
JPEGs of ImageNet's typical sizes (short side 300-500, aspect 3/4-4/3, quality 90) and decodes
them with PIL when indexed, as tfds's array_record source does with a prepared ``imagenet2012``.

For each worker count, prints the images/s of ``train_examples`` on global batches of
``--batch`` (after one warm-up batch) and of ``test_batches``, and the speedup over one worker.
A training step has to wait for the host only when the host is slower than the accelerator.

  python benchmarks/stream_speed.py [--workers 1,2] [--batch 256] [--batches 4] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

from jaxquant.data import StreamingDataset, batch_indices


class JpegSource:
    """``source[i]`` -> ``{'image': uint8 HWC, 'label': int}``, decoding a stored JPEG."""

    def __init__(self, count: int, seed: int = 0):
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.encoded, self.labels = [], rng.integers(0, 1000, count)
        for _ in range(count):
            short = int(rng.integers(300, 501))
            long = int(short * rng.uniform(1.0, 4 / 3))
            h, w = (
                (short, long) if rng.random() < 0.7 else (long, short)
            )  # most photos are landscape
            # Smooth noise compresses like a photo (white noise would make huge files).
            small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            self.encoded.append(buffer.getvalue())

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        return {
            "image": np.asarray(Image.open(io.BytesIO(self.encoded[index])).convert("RGB")),
            "label": int(self.labels[index]),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per worker count")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--images", type=int, default=512, help="distinct JPEGs in the stand-in source"
    )
    args = parser.parse_args(argv)
    source = JpegSource(args.images)
    mean_kb = statistics.mean(len(e) for e in source.encoded) / 1024
    print(
        f"stand-in source: {len(source)} JPEGs, mean {mean_kb:.0f} KiB; batch {args.batch}, "
        f"{args.size}x{args.size}"
    )
    print("| workers | train images/s | speedup | eval images/s | speedup |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for workers in (int(w) for w in args.workers.split(",")):
        ds = StreamingDataset(
            "imagenet2012", source, source, 1000, (0.5,) * 3, (0.25,) * 3, args.size, workers
        )
        ds.train_examples(
            batch_indices(0, 0, len(source), args.batch), 0, 0
        )  # warm-up: threads, PIL
        start = time.perf_counter()
        for step in range(1, args.batches + 1):
            ds.train_examples(batch_indices(0, step, len(source), args.batch), 0, step)
        train = args.batches * args.batch / (time.perf_counter() - start)
        start = time.perf_counter()
        count = sum(len(labels) for _, labels in ds.test_batches(args.batch))
        evaluation = count / (time.perf_counter() - start)
        base = base or (train, evaluation)
        print(
            f"| {workers} | {train:.0f} | {train / base[0]:.2f}x | {evaluation:.0f} "
            f"| {evaluation / base[1]:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
