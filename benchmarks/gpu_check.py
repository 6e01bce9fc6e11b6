"""A check for a lent GPU, under 8 minutes on one: does spnas run on CUDA, and how fast.

1. ``smoke_search``: ``spnas search studies/smoke.yaml --workers 2`` on CUDA, both workers on
   the one GPU (``spnas search`` gives each worker ``schedule.gpus_per_trial`` devices, round
   robin), in a temporary directory; its exit code, phase and wall time.
2. ``throughput``: training images/s at 800×1333 (batch 2, random images and 4 boxes each,
   80 classes) of Faster R-CNN with the SPNet ResNet-50 ``BNB(111,d111,d11111,d11)`` and with
   detectron2's own R50-FPN (the same config otherwise: ``benchmarks/parity.py``'s pair on
   ``faster_rcnn_spnet_fpn_fast.yaml``), each with AMP off and on (``torch.autocast`` and a
   grad scaler, as detectron2's ``AMPTrainer``); ``ratio`` = SPNet images/s / R50-FPN
   images/s; peak GPU memory of each (``torch.cuda.max_memory_allocated``).

Writes ``benchmarks/results/gpu_check.json`` (or ``--out``). Without CUDA it says so and
exits with code 2.

Run: ``make gpu-check`` or ``.venv/bin/python benchmarks/gpu_check.py [--json]
[--iters 20] [--warmup 5] [--size 800x1333] [--skip-search] [--out FILE]``.
``--device cpu`` runs the same code on the CPU, for a toy run of the throughput part where there
is no GPU (``--device cpu --skip-search --size 32x32 --iters 1 --warmup 0``: seconds; AMP on
the CPU is bfloat16 autocast, and there is no peak memory); its figures say nothing of a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import spnas  # noqa: F401  (before detectron2: installs its compatibility shims)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import base_parser, report

# detectron2 (and parity.py, which imports it) load in the functions that use them: without a
# GPU the check says so in the time torch takes to import, not detectron2's too.

NAME = "gpu_check"
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 800, 1333
SEARCH_TIMEOUT_S = 300


def smoke_search(workers: int = 2, device: str = "cuda") -> dict[str, Any]:
    """The smoke study on ``device`` with ``workers`` workers sharing the GPU."""
    with tempfile.TemporaryDirectory(prefix="spnas-gpu-check-") as tmp:
        command = [
            sys.executable,
            "-m",
            "spnas",
            "search",
            str(REPO / "studies" / "smoke.yaml"),
            "--workers",
            str(workers),
            "--set",
            f"schedule.device={device}",
            "--set",
            f"study.workdir={tmp}/smoke",
            "--set",
            f"data.dir={tmp}/smoke/data",
        ]
        started = time.perf_counter()
        try:
            run = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=SEARCH_TIMEOUT_S,
                check=False,
                cwd=REPO,
                env=dict(
                    os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0")
                ),
            )
        except subprocess.TimeoutExpired:
            return {"workers": workers, "timed_out_after_s": SEARCH_TIMEOUT_S}
        lines = run.stdout.strip().splitlines()
        return {
            "workers": workers,
            "returncode": run.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "status": next((line for line in lines if line.startswith("study ")), None),
            "last_lines": lines[-5:] + run.stderr.strip().splitlines()[-5:],
        }


def parse_size(text: str) -> tuple[int, int]:
    """``"800x1333"`` → ``(800, 1333)`` (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected HEIGHTxWIDTH, e.g. 800x1333"
        ) from None
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 32 px a side")
    return height, width


def _batch(
    device: torch.device, size: tuple[int, int] = (HEIGHT, WIDTH), seed: int = 0
) -> list[dict[str, Any]]:
    from detectron2.structures import Boxes, Instances
    from parity import BOXES_PER_IMAGE, NUM_CLASSES

    height, width = size
    # Boxes of 32 px up to half the shorter side (400 px at 800x1333).
    largest = max(min(height, width) / 2, 32.0)
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        wh = torch.empty(BOXES_PER_IMAGE, 2).uniform_(min(32.0, largest / 2), largest, generator=g)
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * (torch.tensor([width, height]) - wh)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=-1))
        instances.gt_classes = torch.randint(0, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=g)
        batch.append({"image": image.to(device), "instances": instances.to(device)})
    return batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    cfg: Any,
    amp: bool,
    warmup: int,
    iters: int,
    device: str = "cuda",
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> dict[str, Any]:
    """Train ``cfg``'s detector on one fixed batch; images/s and peak memory (CUDA only)."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = device
    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    # A grad scaler for float16 (CUDA); bfloat16 autocast on the CPU needs none.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)
    batch = _batch(dev, size)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    storage = EventStorage()
    started = 0.0
    for it in range(warmup + iters):
        if it == warmup:
            _synchronize(dev)
            started = time.perf_counter()
        with storage, torch.autocast(dev.type, enabled=amp):
            loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _synchronize(dev)
    seconds = time.perf_counter() - started
    result = {
        "images_per_s": round(iters * len(batch) / seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "final_loss": float(loss.detach()),
    }
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return result


def throughput(
    warmup: int, iters: int, device: str = "cuda", size: tuple[int, int] = (HEIGHT, WIDTH)
) -> dict[str, Any]:
    from parity import resnet_cfg, spnet_cfg

    from spnas.arch import RESNET50

    spnet, _ = spnet_cfg(RESNET50, "faster_rcnn_spnet_fpn_fast.yaml", anchor_size=32)
    spnet.INPUT.MAX_SIZE_TRAIN = size[1]
    detectron2_r50 = resnet_cfg(spnet, depth=50, res2_channels=256, stride_in_1x1=True)
    rows: dict[str, Any] = {}
    for amp in (False, True):
        key = "amp" if amp else "fp32"
        ours = images_per_second(spnet, amp, warmup, iters, device, size)
        theirs = images_per_second(detectron2_r50, amp, warmup, iters, device, size)
        rows[key] = {
            "spnet_r50": ours,
            "detectron2_r50_fpn": theirs,
            "ratio": round(ours["images_per_s"] / theirs["images_per_s"], 3),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(HEIGHT, WIDTH),
        metavar="HxW",
        help=f"training image size (default {HEIGHT}x{WIDTH})",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: the same code on the CPU, a toy run where there is no GPU",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); this check needs a GPU and has not run",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": args.device,
        "image_size": list(args.size),
        "batch": 2,
        "throughput": throughput(args.warmup, args.iters, args.device, args.size),
        "max_memory_gib_total": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if args.device == "cuda"
        else None,
    }
    if not args.skip_search:
        result["smoke_search"] = smoke_search(device=args.device)
    result["seconds"] = round(time.perf_counter() - started, 1)
    report(NAME, result, args)
    search = result.get("smoke_search", {})
    return 0 if args.skip_search or search.get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
