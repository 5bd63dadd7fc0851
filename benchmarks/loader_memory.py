"""Peak RSS of loading an MLLMU-Bench-sized copy (``--images`` profiles with one 1024^2
JPEG each, in the official parquet layout) with lazy images (verified at load, decoded
per batch: what ``cagul.data.load_dataset`` does) against decoding every image at load
(the old eager reader). Each measurement runs in a fresh process.

    python benchmarks/loader_memory.py [--images 2000] [--eager-images 250]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile

SIDE = 1024


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:SIDE, 0:SIDE]
    pixels = np.stack([(x + seed) % 256, (y + 3 * seed) % 256, (x + y + 7 * seed) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _row(i: int) -> dict:
    question = {"Type": "Image_Textual", "Question": f"Where does p{i} live?", "Ground_Truth": "x"}
    return {
        "ID": f"p{i}",
        "image": {"bytes": _jpeg(i), "path": None},
        "Generation_Task": [question],
    }


def write_copy(root: str, n: int) -> None:
    """forget_5 (the first 5%) and retain_95 (the rest) parquet files of ``n`` profiles."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_forget = max(1, n // 20)
    for name, ids in (("forget_5", range(n_forget)), ("retain_95", range(n_forget, n))):
        os.makedirs(os.path.join(root, name))
        writer = None
        for start in range(ids.start, ids.stop, 100):  # 100 rows at a time: small writer RSS
            table = pa.Table.from_pylist(
                [_row(i) for i in range(start, min(start + 100, ids.stop))]
            )
            writer = writer or pq.ParquetWriter(os.path.join(root, name, "t.parquet"), table.schema)
            writer.write_table(table)
        writer.close()


def measure(root: str, eager: bool) -> None:
    from cagul.data import load_dataset, load_image

    bench = load_dataset(root, "mllmu")
    samples = [s for split in bench.eval_splits for s in bench.splits[split]]
    decoded = [load_image(s["image"]) for s in samples] if eager else []
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "images": len(samples),
                "eager": eager,
                "decoded": len(decoded),
                "peak_rss_mib": round(peak_mib),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument(
        "--eager-images",
        type=int,
        default=250,
        help="profiles for the eager measurement (it holds 3 MiB per image)",
    )
    parser.add_argument("--measure", nargs=2, metavar=("ROOT", "EAGER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1] == "1")
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "python"])}
    with tempfile.TemporaryDirectory() as tmp:
        for n, modes in ((args.eager_images, (False, True)), (args.images, (False,))):
            root = os.path.join(tmp, str(n))
            write_copy(root, n)
            for eager in modes:
                cmd = [sys.executable, __file__, "--measure", root, "1" if eager else "0"]
                subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
