"""``spnas train CONFIG``: train an exported network on the full schedule and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from spnas.cli._json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a detectron2 config (e.g. from `spnas export`) and evaluate it",
        description="Train with SPNASTrainer on the config's schedule, starting from "
        "MODEL.WEIGHTS, on SPNAS.DATA_DIR (or --data), and evaluate on its validation split. "
        "Started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and "
        "MASTER_PORT set), each process is one rank of torchrun's group: --num-gpus, "
        "--num-machines, --machine-rank and --dist-url come from torchrun's environment "
        "(given as well, they must agree); global rank 0 prints the result and writes the "
        "weights.",
    )
    parser.add_argument("config", help="detectron2 YAML config")
    parser.add_argument("--data", help="data set directory (default: SPNAS.DATA_DIR)")
    parser.add_argument("--out", help="output directory (default: OUTPUT_DIR)")
    parser.add_argument("--iters", type=int, help="override SOLVER.MAX_ITER")
    parser.add_argument("--device", default="auto")
    # Distributed training, as detectron2's tools/train_net.py, or under torchrun.
    parser.add_argument(
        "--num-gpus",
        type=int,
        help="processes on this machine (Gloo on the CPU; default 1; under torchrun: "
        "--nproc-per-node)",
    )
    parser.add_argument("--num-machines", type=int, help="default 1; under torchrun: --nnodes")
    parser.add_argument(
        "--machine-rank",
        type=int,
        help="this machine's rank (default 0; under torchrun: RANK // LOCAL_WORLD_SIZE)",
    )
    parser.add_argument(
        "--dist-url",
        help="tcp://HOST:PORT of machine 0 (default auto: one machine; under torchrun: env://)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let MODEL.WEIGHTS be a pickle (.pkl) file; pickles can run code: only for "
        "files you trust",
    )
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import sys

    import torch

    from spnas.data.coco import DatasetSplits
    from spnas.device import check_one_gpu_each, resolve_device
    from spnas.engines.detectron2 import check_model_weights, get_spnas_cfg
    from spnas.engines.detectron2.train_net import train_net
    from spnas.engines.distributed import launch, synced_norm
    from spnas.exceptions import ConfigError

    num_gpus, num_machines, machine_rank, dist_url = _layout(args)
    where = f"--device {args.device!r} with --num-gpus {num_gpus}"
    check_one_gpu_each(args.device, num_gpus, where)
    cfg = get_spnas_cfg(args.config)
    if args.opts:
        cfg.merge_from_list(args.opts)
    check_model_weights(cfg, allow_pickle=args.allow_pickle)
    data_dir = args.data or cfg.SPNAS.DATA_DIR
    if not data_dir:
        raise ConfigError(f"{args.config}: SPNAS.DATA_DIR is empty; pass --data DIR")
    cfg.SPNAS.DATA_DIR = str(DatasetSplits.from_dir(data_dir).root)
    cfg.MODEL.DEVICE = str(resolve_device(args.device))
    if num_gpus * num_machines > 1:  # batch statistics of the whole batch
        cfg.MODEL.SPNAS.NORM = synced_norm(cfg.MODEL.SPNAS.NORM, torch.device(cfg.MODEL.DEVICE))
    if args.iters:
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = tuple(s for s in cfg.SOLVER.STEPS if s < args.iters)
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(args.iters // 5, 1))
    if args.out:
        cfg.OUTPUT_DIR = args.out
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        result = launch(
            train_net,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=(cfg, args.resume, args.allow_pickle),
            backend="nccl" if cfg.MODEL.DEVICE.startswith("cuda") else "gloo",
        )
    if result is None:  # a process other than global rank 0: rank 0 reports
        return 0
    metrics, weights = result["metrics"], result["weights"]
    if args.json:
        print(dumps({"metrics": metrics, "weights": weights}, indent=2))
    else:
        shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("AP", "AP50", "AP75") if k in metrics)
        print(f"trained {result['iterations']} iterations: {shown} -> {weights}")
    return 0


def _layout(args: argparse.Namespace) -> tuple[int, int, int, str]:
    """``(num_gpus, num_machines, machine_rank, dist_url)``: the flags' (defaults 1, 1, 0,
    ``auto``), or torchrun's environment's, which a flag given as well must match."""
    from spnas.engines.distributed import torchrun_env
    from spnas.exceptions import ConfigError

    env = torchrun_env()
    if env is None:
        return (
            1 if args.num_gpus is None else args.num_gpus,
            1 if args.num_machines is None else args.num_machines,
            0 if args.machine_rank is None else args.machine_rank,
            args.dist_url or "auto",
        )
    ours = (env.num_processes, env.num_machines, env.machine_rank, "env://")
    flags = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")
    given = (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    sources = (
        f"LOCAL_WORLD_SIZE={env.local_world_size}",
        f"WORLD_SIZE={env.world_size} / LOCAL_WORLD_SIZE={env.local_world_size}",
        f"RANK={env.rank} // LOCAL_WORLD_SIZE={env.local_world_size}",
        "torchrun's MASTER_ADDR and MASTER_PORT",
    )
    for flag, value, expected, source in zip(flags, given, ours, sources, strict=True):
        if value is not None and value != expected:
            raise ConfigError(
                f"{flag} {value} contradicts torchrun's environment ({source}: {expected}); "
                f"under torchrun leave {flag} out"
            )
    return ours
