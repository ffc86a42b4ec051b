"""DDP: `torchrun --nproc_per_node 2 -m medsad_monai.cli train …` on CPU (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from medsad_monai.checkpoint import read_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_see_disjoint_data_and_rank0_writes(tiny_volumes, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "medsad_monai.cli",
        "train",
        "--data",
        str(tiny_volumes),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--record-samples",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = []
    for rank in (0, 1):
        lines = (run / f"samples_rank{rank}.txt").read_text().splitlines()
        seen.append({line.split("\t")[1] for line in lines})
    assert seen[0] and seen[1]
    assert seen[0].isdisjoint(seen[1])
    assert read_checkpoint(run / "last.pt")["extra"]["epoch"] == 1
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]


def test_single_process_cuda_device_gets_an_index(monkeypatch):
    """`medsad train` on a GPU without torchrun: "cuda" (the default) must become "cuda:<current>",
    since `torch.cuda.set_device` refuses an index-less device (found by the GPU check on an H200).
    No GPU here, so CUDA's three calls are replaced; the logic under test is ours."""
    import torch

    from medsad_monai.engine import distributed

    chosen: list[torch.device] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: chosen.append(torch.device(dev)))
    for asked, expected in ((None, "cuda:3"), ("cuda", "cuda:3"), ("cuda:1", "cuda:1")):
        ctx = distributed.setup(asked)
        assert ctx.device == torch.device(expected) and chosen[-1] == torch.device(expected)
        assert not ctx.distributed
    assert distributed.setup("cpu").device == torch.device("cpu")
