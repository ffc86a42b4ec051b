"""MONAI Label server under load: N concurrent infer requests on the sample volumes.

Starts the real ``monailabel start_server`` with the MedSAD app on a copy of the sample test
volumes and a tiny MedSAD-CLIP checkpoint at 128 px (random init: latency does not depend on
training), measures a single request (median of 3), then N requests at once from N threads,
each with MONAI Label's own client, while one more thread polls ``/info/``. Every request must
succeed. The last line:

    load_p95_over_single=<p95 under load / single> p50_s=<x> p95_s=<y> single_s=<z> n=<N> ok=<k>
        info_idle_s=<median /info/ latency, idle> info_p95_under_load_s=<p95 while inferring>

    python bench/server_load.py [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from server_process import monailabel_server  # noqa: E402


def _checkpoint(path: Path) -> Path:
    import torch

    from medsad_monai.checkpoint import save_checkpoint
    from medsad_monai.configs import load_preset
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(0)
    return save_checkpoint(MedSADCLIP(load_preset("tiny")), path)


def _one(url: str, image_id: str, tmp: Path) -> float:
    from monailabel.client import MONAILabelClient

    start = time.perf_counter()
    mask, params = MONAILabelClient(url, tmpdir=str(tmp)).infer("medsad", image_id, {})
    elapsed = time.perf_counter() - start
    params = params if isinstance(params, dict) else json.loads(params)
    if not Path(mask).is_file() or "slice_scores" not in params:
        raise RuntimeError(f"bad answer for {image_id}: {params}")
    return elapsed


def _info(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"{url}/info/", timeout=300) as res:
        res.read()
    return time.perf_counter() - start


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        studies = tmp / "studies"
        studies.mkdir()
        images = sorted((ROOT / "sample_data" / "volumes" / "imagesTs").glob("*.nii.gz"))
        for image in images:
            shutil.copy2(image, studies / image.name)
        ids = [p.name[: -len(".nii.gz")] for p in images]
        ckpt = _checkpoint(tmp / "medsad.pt")
        with monailabel_server(studies, {"checkpoint": str(ckpt)}, tmp / "server.log") as url:
            _one(url, ids[0], tmp)  # warm-up: model load
            single = statistics.median(_one(url, ids[0], tmp) for _ in range(3))
            info_idle = statistics.median(_info(url) for _ in range(5))
            jobs = [ids[i % len(ids)] for i in range(args.concurrency)]
            with ThreadPoolExecutor(args.concurrency) as pool:
                futures = [pool.submit(_one, url, image_id, tmp) for image_id in jobs]
                info_under_load = []
                while not all(f.done() for f in futures):
                    info_under_load.append(_info(url))
                    time.sleep(0.1)
                latencies, failures = [], []
                for f in futures:
                    try:
                        latencies.append(f.result())
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        failures.append(repr(err))
    if failures:
        print(f"{len(failures)} of {args.concurrency} requests failed: {failures[:3]}")
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = _p95(latencies)
    info_p95 = _p95(info_under_load)
    print(f"single request {single:.2f} s; {args.concurrency} concurrent: p50 {p50:.2f} s, p95 {p95:.2f} s")
    print(f"/info/: idle {info_idle:.3f} s, p95 {info_p95:.3f} s over {len(info_under_load)} polls under load")
    print(
        f"load_p95_over_single={p95 / single:.2f} p50_s={p50:.2f} p95_s={p95:.2f} single_s={single:.2f} "
        f"n={args.concurrency} ok={len(latencies)} info_idle_s={info_idle:.3f} info_p95_under_load_s={info_p95:.3f}"
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
