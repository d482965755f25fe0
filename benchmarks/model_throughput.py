"""Model throughput (Mpx/s): for each model, ``WaterModel.predict`` on a pipeline block (the
1024 px block with the model's halo on every side) beside its peer arm, the network's forward
pass alone on the very features ``predict`` feeds it for that block, and their ratio (the
share of ``predict`` time that is the network); the full-tile (10980²) time estimated from
``predict``; ``predict`` on a larger array (tiling and blending); on the CPU, the network alone
per engine (fp32, channels_last, bf16, TorchScript) on batches of tiles. The device is chosen
at run time (``--device auto``: CUDA when present). Inputs are random reflectances: speed, not
accuracy, is measured. Mpx/s count output pixels (10 m) for every arm.

    .venv/bin/python benchmarks/model_throughput.py [--weights NAME_OR_FILE ...] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aquamask.model.inference import WaterModel, shipped_models

RESULTS = Path(__file__).parent / "results"
FULL_TILE = 10980
PIPELINE_BLOCK = 1024


def median_rate(fn: Callable[[], object], pixels: int, repeats: int, device: torch.device
                ) -> float:
    """Mpx/s of ``fn`` over ``pixels`` pixels: the median of ``repeats`` timed calls after a
    warm-up (oneDNN and cuDNN pick their kernels on the first call)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times = []
    with torch.inference_mode():
        fn()
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return pixels / statistics.median(times) / 1e6


def block_arms(model: WaterModel, side: int, repeats: int) -> list[dict]:
    """``predict`` on a ``side``² block and the forward pass alone on its network features."""
    block = np.random.default_rng(1).uniform(100, 4000, (6, side, side)).astype(np.float32)
    feats = model.network_features(block).to(model.device)
    pixels = side * side
    predict = median_rate(lambda: model.predict(block), pixels, repeats, model.device)
    forward = median_rate(lambda: model.logits(feats), pixels, repeats, model.device)
    label = (f"{model.name} {model.version} (scale {model.scale}, "
             f"{'guided refinement' if model.refine else 'bilinear'}, {model.precision}, "
             f"{model.engine}, {model.device.type})")
    return [{"model": label, "arm": f"predict {side}² block", "mpx_s": round(predict, 3)},
            {"model": label, "arm": f"forward alone, same block ({feats.shape[-1]}² at the "
                                    f"network)", "mpx_s": round(forward, 3)},
            {"model": label, "arm": "predict / forward", "ratio": round(predict / forward, 3)},
            {"model": label, "arm": f"full tile {FULL_TILE}² predict, estimated",
             "seconds": round(FULL_TILE ** 2 / predict / 1e6, 1)}]


def engine_arms(model: WaterModel, tile: int, batch: int, repeats: int) -> list[dict]:
    """The network alone on ``batch`` x ``tile``² standardised inputs, per engine."""
    net = model.net
    x = torch.randn(batch, net.in_channels, tile, tile)
    arms: dict[str, Callable[[], object]] = {}
    if model.device.type == "cpu":
        last = x.contiguous(memory_format=torch.channels_last)
        contiguous = x.contiguous()
        arms["eager fp32 (contiguous)"] = lambda: net.to(
            memory_format=torch.contiguous_format)(contiguous)
        arms["eager fp32 (channels_last)"] = lambda: net.to(
            memory_format=torch.channels_last)(last)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(last)
        arms["eager bf16 autocast (channels_last)"] = bf16
        traced = model.export_torchscript(tile=tile)
        arms["TorchScript frozen fp32"] = lambda: traced(last)
    else:
        gpu = x.to(model.device)

        def fp16():
            with torch.autocast("cuda", dtype=torch.float16):
                return net(gpu)
        arms["CUDA fp32"] = lambda: net(gpu)
        arms["CUDA fp16 autocast"] = fp16
        pinned = x.pin_memory()
        arms["CUDA fp16 + pinned host->device copy"] = lambda: net(
            pinned.to(model.device, non_blocking=True))
    label = f"{model.name} {model.version}"
    rows = [{"model": label, "arm": f"network alone {batch} x {tile}²: {name}",
             "mpx_s": round(median_rate(fn, batch * tile * tile, repeats, model.device), 3)}
            for name, fn in arms.items()]
    net.to(memory_format=torch.channels_last if model.device.type == "cpu"
           else torch.contiguous_format)
    return rows


def run(weights: list[str], device: str, repeats: int, tile: int, batch: int, scene: int,
        engines: bool, block: int = PIPELINE_BLOCK) -> list[dict]:
    rows = []
    for w in weights:
        model = WaterModel.load(w, device=device)
        side = block + 2 * model.halo
        rows += block_arms(model, side, repeats)
        if scene:
            array = np.random.default_rng(0).uniform(100, 4000, (6, scene, scene))
            array = array.astype(np.float32)
            rows.append({"model": f"{model.name} {model.version}",
                         "arm": f"predict {scene}² array (tiled and blended)",
                         "mpx_s": round(median_rate(lambda: model.predict(array), scene ** 2,
                                                    max(1, repeats // 3), model.device), 3)})
        if engines:
            rows += engine_arms(model, tile, batch, repeats)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | arm | Mpx/s | ratio | s |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['arm']} | {r.get('mpx_s', '')} | "
                     f"{r.get('ratio', '')} | {r.get('seconds', '')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", nargs="+",
                        help="models (files or shipped names; default: every shipped model)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scene", type=int, default=2048,
                        help="side of the tiled predict() array (0: skip)")
    parser.add_argument("--block", type=int, default=PIPELINE_BLOCK,
                        help="the pipeline's block side (the model's halo is added around it)")
    parser.add_argument("--no-engines", action="store_true", help="skip the per-engine arms")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = args.weights or shipped_models()
    rows = run(weights, args.device, args.repeats, args.tile, args.batch, args.scene,
               not args.no_engines, args.block)
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {cuda}; medians of {args.repeats} runs")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_throughput.json").write_text(json.dumps(
        {"machine": machine, "device": args.device, "results": rows}, indent=2) + "\n")
    lines = [f"Model throughput ({machine})", ""] + table(rows)
    (args.out / "model_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
