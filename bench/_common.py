"""Shared command line of the model benchmarks (random-init backbone, one preset, one batch)."""

from __future__ import annotations

import argparse

import torch


def model_bench_args(doc: str | None, runs: int) -> argparse.Namespace:
    """``--model --preset --batch --runs --device`` for a benchmark whose docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random init)")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=runs, help="timed runs per side (median is used)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def header(args: argparse.Namespace, size: int, extra: str = "") -> str:
    """The first result line: what ran where."""
    return (
        f"device={args.device} model={args.model} preset={args.preset} batch={args.batch} size={size} "
        f"threads={torch.get_num_threads()} runs={args.runs}{extra}"
    )
