"""``spnas train-eval``: train one detector with an SPNet backbone and evaluate it."""

from __future__ import annotations

import argparse
import contextlib
import sys

from spnas.cli._json import dumps
from spnas.engines import engine_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-eval",
        help="train and evaluate one architecture (what a search trial does)",
        description="Train a Faster R-CNN with the given backbone on a COCO-format data set "
        "directory (train.json, val.json, images/) and evaluate it on the validation split.",
    )
    parser.add_argument("--engine", default="detectron2", choices=engine_names())
    parser.add_argument("--arch", required=True, help='serial code, e.g. "BB(11,d1,d1,d1)"')
    parser.add_argument("--parallel", help='parallel code, e.g. "(0,1,1,0)"')
    parser.add_argument("--width", type=int, default=64, help="backbone base width")
    parser.add_argument("--stem", default="resnet", choices=("resnet", "deep"))
    parser.add_argument("--norm", default="BN", choices=("BN", "SyncBN", "FrozenBN", "GN"))
    parser.add_argument("--fpn-channels", type=int, default=256)
    parser.add_argument("--anchor-size", type=int, default=32, help="anchor size at stride 4")
    parser.add_argument("--data", required=True, help="data set directory")
    parser.add_argument("--metric", default="AP", help="AP, AP50, … or LAMR")
    parser.add_argument("--schedule", default="fast", choices=("fast", "full"))
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help="training iterations")
    length.add_argument("--epochs", type=float, help="training epochs")
    parser.add_argument("--ims-per-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.02, help="base learning rate")
    parser.add_argument("--min-size", type=int, default=800, help="image shorter side")
    parser.add_argument("--max-size", type=int, default=1333, help="image longer side cap")
    parser.add_argument("--eval-period", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="data-parallel processes (one per GPU; Gloo on the CPU); --ims-per-batch is "
        "their total batch",
    )
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="weights: a detector or bare backbone state dict")
    parser.add_argument("--init-arch", help="architecture of --init when it differs (a parent)")
    parser.add_argument(
        "--ops", default="", help='morphisms from --init-arch, e.g. "expand(s1,after=0)"'
    )
    parser.add_argument("--config", help="detectron2 YAML to start from (detectron2 engine)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the TrialResult as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.engines import DataSpec, InitWeights, ModelSpec, Schedule, build_engine
    from spnas.morphism import parse_ops

    data = DataSpec.from_dir(args.data, metric=args.metric)
    num_classes = len(data.splits.load("train", check_images=False).categories)
    spec = ModelSpec(
        args.arch,
        num_classes=num_classes,
        parallel=args.parallel,
        base_width=args.width,
        stem=args.stem,
        norm=args.norm,
        fpn_channels=args.fpn_channels,
        anchor_size=args.anchor_size,
    )
    length = {"iters": args.iters} if args.iters else {}
    if args.epochs:
        length = {"epochs": args.epochs}
    factory = Schedule.fast if args.schedule == "fast" else Schedule.full
    schedule = factory(
        **length,
        ims_per_batch=args.ims_per_batch,
        base_lr=args.lr,
        min_size=args.min_size,
        max_size=args.max_size,
        eval_period=args.eval_period,
        num_workers=args.num_workers,
        device=args.device,
        seed=args.seed,
        gpus_per_trial=args.num_gpus,
        amp=args.amp,
    )
    init = None
    if args.init:
        ops = tuple(str(op) for op in parse_ops(args.ops)) if args.ops else ()
        init = InitWeights(args.init, parent_arch=args.init_arch, ops=ops)
    options = {"show_progress": not args.no_progress}
    if args.config:
        options["config"] = args.config
    engine = build_engine(args.engine, **options)
    # pycocotools and detectron2 print to stdout; keep it for the result (--json is parsed).
    with contextlib.redirect_stdout(sys.stderr):
        result = engine.train_eval(spec, init, schedule, data, out_dir=args.out)
    if args.json:
        print(dumps(result.to_dict(), indent=2))
    else:
        metrics = result.metrics
        print(
            f"{spec.arch}{' ' + str(spec.parallel) if spec.parallel else ''}: "
            + ", ".join(
                f"{k} {metrics[k]:.2f}" for k in ("AP", "AP50", "AP75", "LAMR") if k in metrics
            )
            + f" | {result.gmacs:.2f} GMACs, {result.params_m:.2f} M params, "
            f"{result.iterations} iterations in {result.train_seconds:.0f} s "
            f"({result.images_per_second:.1f} images/s) -> {result.weights}"
        )
    return 0
