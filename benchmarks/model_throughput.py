"""Model throughput (Mpx/s) per engine: the network alone on batches of tiles, and
``WaterModel.predict`` on a whole array (features, tiling, blending included). A GPU section runs
when CUDA is present. Inputs are random reflectances: speed, not accuracy, is measured.

    .venv/bin/python benchmarks/model_throughput.py [--tile 512] [--batch 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from aquamask.model.inference import WaterModel

RESULTS = Path(__file__).parent / "results"


def rate(fn, pixels: int, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up (oneDNN picks its kernels on the first call)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return pixels * repeats / (time.perf_counter() - start) / 1e6


def engines(model: WaterModel, x: torch.Tensor) -> dict:
    net = model.net
    out = {}
    contiguous = x.contiguous()
    last = x.contiguous(memory_format=torch.channels_last)
    if model.device.type == "cpu":
        out["eager fp32 (contiguous)"] = lambda: net.to(memory_format=torch.contiguous_format)(
            contiguous)
        out["eager fp32 (channels_last)"] = lambda: net.to(
            memory_format=torch.channels_last)(last)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(last)
        out["eager bf16 autocast (channels_last)"] = bf16
        traced = torch.jit.freeze(torch.jit.trace(net.eval(), last, check_trace=False))
        out["TorchScript frozen fp32"] = lambda: traced(last)
    else:
        gpu = last.to(model.device)

        def fp16():
            with torch.autocast("cuda", dtype=torch.float16):
                return net(gpu)
        out["CUDA fp32"] = lambda: net(gpu)
        out["CUDA fp16 autocast"] = fp16
        pinned = last.pin_memory()
        out["CUDA fp16 + pinned host->device copy"] = lambda: (
            net(pinned.to(model.device, non_blocking=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scene", type=int, default=2048, help="side of the predict() array")
    parser.add_argument("--weights", help="weights file (default: the newest shipped)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = WaterModel.load(args.weights)
    x = torch.randn(args.batch, model.net.in_channels, args.tile, args.tile)
    pixels = args.batch * args.tile * args.tile
    rows = [{"engine": name, "mpx_s": round(rate(fn, pixels, args.repeats), 3)}
            for name, fn in engines(model, x).items()]
    scene = np.random.default_rng(0).uniform(100, 4000, (6, args.scene, args.scene))
    scene = scene.astype(np.float32)
    rows.append({"engine": f"WaterModel.predict {args.scene}x{args.scene} (default settings: "
                           f"scale {model.scale}, {model.precision}, {model.engine})",
                 "mpx_s": round(rate(lambda: model.predict(scene), args.scene ** 2, 1), 3)})
    # the pipeline's case: a 1024 px block with the model's halo on every side
    side = 1024 + 2 * model.halo
    block = np.ascontiguousarray(scene[:, :side, :side]) if args.scene >= side else \
        np.random.default_rng(1).uniform(100, 4000, (6, side, side)).astype(np.float32)
    if model.device.type == "cpu":
        default = (model.scale, model.precision, model.engine)
        for scale in (1, 2):
            for precision in ("fp32", "bf16"):
                for engine in ("eager", "torchscript"):
                    if engine == "torchscript" and precision == "bf16":
                        continue                        # traced fp32 graph: autocast n/a
                    model.scale, model.precision, model.engine = scale, precision, engine
                    rows.append({"engine": f"WaterModel.predict {side}x{side} block: "
                                           f"scale {scale}, {precision}, {engine}",
                                 "mpx_s": round(rate(lambda: model.predict(block),
                                                     side * side, args.repeats), 3)})
        model.scale, model.precision, model.engine = default
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, device {model.device}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_throughput.json").write_text(json.dumps(
        {"machine": machine, "model": f"{model.name} {model.version}", "tile": args.tile,
         "batch": args.batch, "results": rows}, indent=2))
    lines = [f"{model.name} {model.version} ({machine}); tiles {args.batch} x {args.tile}²", "",
             "| engine | Mpx/s |", "| --- | --- |"]
    lines += [f"| {r['engine']} | {r['mpx_s']} |" for r in rows]
    (RESULTS / "model_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
