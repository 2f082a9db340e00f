"""Quantizer speed and memory: vqgen ``VectorQuantizer`` vs ``vector_quantize_pytorch.VectorQuantize``.

Prints one JSON object per line for each (N, D, K), implementation and op:

- ``train_step``: forward + backward (through the straight-through output and the loss) + EMA
  update, module in training mode (k-means init / first-call work happens during warmup);
- ``encode``: eval mode, no grad, input -> codes.

``ms`` is the median wall time per iteration after ``--warmup`` iterations (``torch.cuda.synchronize``
around each one on CUDA). ``peak_mb`` is the memory an iteration adds on top of what was allocated
before it: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the timed
loop; on CPU the rise of the process's peak resident set size (``VmHWM`` in ``/proc/self/status``,
reset with ``/proc/self/clear_refs`` before each op; falls back to the ``ru_maxrss`` delta, which
only sees new process-wide peaks), so CPU numbers include allocator slack and are approximate.
After both implementations ran for one size and op, a ``speedup`` line gives vqp_ms / vqgen_ms.

    python benchmarks/bench_quantizer.py --device cpu
    python benchmarks/bench_quantizer.py --device cuda --sizes 65536,64,8192 65536,64,65536 --amp
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vqgen.tokenizers.quantizers import VectorQuantizer  # noqa: E402

CPU_SIZES = ["4096,64,512", "4096,64,8192"]
CUDA_SIZES = ["65536,64,8192", "65536,64,65536"]


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, d, k = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,K (three integers), got {text!r}") from None
    return n, d, k


# --------------------------------------------------------------------------- memory probes
def _proc_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Extra peak memory (MiB) of a block; see the module docstring for what is measured."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.base, self.method = _proc_kb("VmRSS"), "VmHWM-VmRSS"
            if self.base is None:
                raise OSError
        except OSError:
            self.base, self.method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss delta"

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        if self.method == "VmHWM-VmRSS":
            return (_proc_kb("VmHWM") - self.base) / 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024


# --------------------------------------------------------------------------- timing
def measure(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    mem = PeakMemory(device)
    mem.start()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = mem.stop()
    return {"ms": round(statistics.median(times), 3), "ms_min": round(min(times), 3),
            "peak_mb": round(peak, 1), "memory": mem.method}


def make_ops(impl: str, n: int, d: int, k: int, device: torch.device, amp: bool):
    """Returns {op: callable} for one implementation (raises ImportError for a missing one)."""
    z = torch.randn(n, d, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    if impl == "vqgen":
        q = VectorQuantizer(d, k, decay=0.99, beta=0.25).to(device)

        def forward(x):
            out = q(x)
            return out.quantized, out.loss

        def encode():
            with torch.no_grad(), autocast:
                q.encode(z)
    else:
        from vector_quantize_pytorch import VectorQuantize
        q = VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25).to(device)

        def forward(x):
            quantized, _, loss = q(x.unsqueeze(0))
            return quantized, loss

        def encode():
            with torch.no_grad(), autocast:
                q(z.unsqueeze(0))

    def train_step():
        q.train()
        x = z.detach().requires_grad_()
        with autocast:
            quantized, loss = forward(x)
        (quantized.float().sum() + loss.sum()).backward()

    def encode_eval():
        q.eval()
        encode()

    return {"train_step": train_step, "encode": encode_eval}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None, metavar="N,D,K",
                    help=f"default: {' '.join(CPU_SIZES)} on CPU, {' '.join(CUDA_SIZES)} on CUDA")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--impl", nargs="+", choices=["vqgen", "vqp"], default=["vqgen", "vqp"])
    ap.add_argument("--amp", action="store_true", help="run under bf16 autocast")
    args = ap.parse_args(argv)

    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    sizes = args.sizes or [parse_size(s) for s in (CUDA_SIZES if device.type == "cuda" else CPU_SIZES)]
    meta = {"device": device.type, "torch": torch.__version__, "amp": args.amp,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    impls = list(args.impl)
    if "vqp" in impls:
        try:
            import vector_quantize_pytorch  # noqa: F401
            meta["vqp_version"] = importlib.metadata.version("vector-quantize-pytorch")
        except ImportError as e:
            impls.remove("vqp")
            print(json.dumps({"note": f"vector_quantize_pytorch not importable ({e}); "
                                      "pip install 'vector-quantize-pytorch==1.32.*' to compare"}))
    print(json.dumps({"meta": meta}), flush=True)

    for n, d, k in sizes:
        results: dict[tuple[str, str], float] = {}
        torch.manual_seed(0)
        ops_by_impl = {impl: make_ops(impl, n, d, k, device, args.amp) for impl in impls}
        for op in ("train_step", "encode"):
            for impl, ops in ops_by_impl.items():
                row = {"impl": impl, "op": op, "N": n, "D": d, "K": k, "device": device.type}
                try:
                    row.update(measure(ops[op], device, args.warmup, args.repeats))
                    results[impl, op] = row["ms"]
                except torch.cuda.OutOfMemoryError as e:
                    row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                    torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
            if ("vqgen", op) in results and ("vqp", op) in results:
                print(json.dumps({"op": op, "N": n, "D": d, "K": k, "device": device.type,
                                  "speedup": round(results["vqp", op] / results["vqgen", op], 2)}),
                      flush=True)
        del ops_by_impl
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
