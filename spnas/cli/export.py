"""``spnas export --study NAME --storage URL --out DIR``: the best network, ready to use."""

from __future__ import annotations

import argparse

from spnas.cli._storage import add_storage_arguments, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a search's best network for detectron2 and torchvision",
        description="Write the best SPNet of a search as a detectron2 YAML config + detector "
        "weights, as a torchvision FasterRCNN file (model_torchvision.pth, loaded with "
        "spnas.export.load_torchvision_detector), and the SPNet backbone alone (state dict + "
        "spnet.json).",
    )
    parser.add_argument("--study", required=True, help="study name")
    add_storage_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.export import export_best

    result = export_best(args.study, storage_url(args), args.out)
    code = result.arch + (f" {result.parallel}" if result.parallel else "")
    print(f"exported trial {result.trial} ({code}, value {result.value:.2f}) to {result.directory}")
    if result.config is not None:
        print(f"  detectron2:  {result.config} with {result.weights}")
    if result.torchvision is not None:
        print(f"  torchvision: {result.torchvision}")
    print(f"  backbone:    {result.backbone} (+ spnet.json)")
    for reason in result.skipped:
        print(f"  not written: {reason}")
    if result.config is not None:
        print(f"  full training: spnas train {result.config}")
    return 0
