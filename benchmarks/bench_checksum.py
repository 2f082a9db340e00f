"""Cost of the weights checksum: loading a ~100 MB ``model.safetensors`` with and without it.

Writes one file of ``--mb`` MB of float32 tensors through :meth:`ConfigModel.save_pretrained`
(SHA-256 of the tensor data in the metadata), then times, median over ``--repeats``:

- ``load_file``: ``safetensors.torch.load_file`` alone (no check; what loading cost before);
- ``read_weights``: vqgen's load = ``load_file`` + SHA-256 over every tensor, compared;
- ``digest``: the SHA-256 alone (also the extra cost of each save).

The file is read once before timing, so the numbers are for a file in the page cache.

    python benchmarks/bench_checksum.py --mb 100
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vqgen.modeling import WEIGHTS_NAME, ConfigModel, read_weights, tensor_digest


@dataclass
class BlobConfig:
    tensors: int = 25
    numel: int = 1_048_576


class Blob(ConfigModel):
    config_class = BlobConfig

    def __init__(self, config: BlobConfig):
        super().__init__(config)
        self.w = nn.ParameterList(nn.Parameter(torch.randn(config.numel)) for _ in range(config.tensors))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=100.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    tensors = max(1, round(args.mb * 2**20 / (4 * 1_048_576)))
    model = Blob.from_config(tensors=tensors)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model.save_pretrained(Path(tmp) / "m")
        save_s = time.perf_counter() - t0
        path = Path(tmp) / "m" / WEIGHTS_NAME
        size_mb = path.stat().st_size / 2**20
        state = read_weights(path)  # warm the page cache
        rows = {"load_file": median_seconds(lambda: load_file(str(path)), args.repeats),
                "read_weights": median_seconds(lambda: read_weights(path), args.repeats),
                "digest": median_seconds(lambda: tensor_digest(state), args.repeats)}
    for op, seconds in rows.items():
        print(json.dumps({"op": op, "file_mb": round(size_mb, 1), "seconds": round(seconds, 4),
                          "mb_per_s": round(size_mb / seconds)}))
    print(json.dumps({"op": "save_pretrained", "file_mb": round(size_mb, 1), "seconds": round(save_s, 3)}))
    print(json.dumps({"summary": True, "check_overhead_seconds": round(rows["read_weights"] - rows["load_file"], 4),
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
