"""benchmarks/model_throughput.py runs on the CPU (the device is chosen at run time: "auto"
without CUDA; its CUDA arms need a GPU), with its peer arms: predict and the forward pass alone
on the same block."""
import json

import pytest
import torch

from benchmarks import model_throughput


def test_benchmark_runs_on_the_cpu_with_the_forward_peer_arm(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)     # "auto" -> CPU
    model_throughput.main(["--weights", "unet-s2-water", "--repeats", "1", "--block", "64",
                           "--scene", "0", "--tile", "32", "--batch", "1", "--threads", "1",
                           "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "model_throughput.json").read_text())["results"]
    arms = {r["arm"].split(" (")[0].split(",")[0]: r for r in rows}
    predict, forward = arms["predict 128² block"], arms["forward alone"]
    assert "cpu" in predict["model"] and predict["mpx_s"] > 0 and forward["mpx_s"] > 0
    ratio = arms["predict / forward"]["ratio"]
    assert ratio == pytest.approx(predict["mpx_s"] / forward["mpx_s"], rel=0.01)
    assert arms["full tile 10980² predict"]["seconds"] > 0
    assert any("TorchScript" in r["arm"] for r in rows)                # the CPU engines
    assert (tmp_path / "model_throughput.md").read_text().count("| unet-s2-water") == len(rows)

