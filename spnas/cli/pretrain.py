"""``spnas pretrain CODE --data DIR|JSON [--imagefolder DIR] --epochs E --out FILE``."""

from __future__ import annotations

import argparse

from spnas.cli._json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="classification pretraining (reignition) of a serial architecture",
        description="Pretrain a serial network on classification: on an ImageFolder, or on "
        "object crops of a COCO detection set. Writes backbone weights loadable by SerialNet.",
    )
    parser.add_argument("code", help='serial code, e.g. "BB(11,d1,d1,d1)"')
    parser.add_argument("--data", help="COCO data set directory (train.json/val.json) or json")
    parser.add_argument("--imagefolder", help="ImageFolder directory (takes precedence)")
    parser.add_argument("--out", required=True, help="output weights file (.pth)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--lr", type=float, default=None, help="default: 0.1 × batch size / 256 (linear scaling)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--width", type=int, default=64, help="base width")
    parser.add_argument("--stem", default="resnet", choices=("resnet", "deep"))
    parser.add_argument("--norm", default="BN", choices=("BN", "SyncBN", "FrozenBN", "GN"))
    parser.add_argument("--xb-groups", type=int, default=32)
    parser.add_argument("--init", help="backbone weights to start from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.arch import SerialCode
    from spnas.exceptions import DataError

    code = SerialCode.parse(args.code)
    if args.data is None and args.imagefolder is None:
        raise DataError("pretrain needs --data DIR|JSON or --imagefolder DIR")

    from spnas.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        base_width=args.width,
        stem=args.stem,
        xb_groups=args.xb_groups,
        seed=args.seed,
    )
    result = pretrain(
        code,
        args.out,
        data=args.data,
        imagefolder=args.imagefolder,
        config=config,
        init_weights=args.init,
        norm=args.norm,
        device=args.device,
        resume=not args.no_resume,
        show_progress=not args.no_progress,
    )
    if args.json:
        print(dumps(result.to_dict(), indent=2))
    else:
        split = "validation" if result.num_val else "training"
        print(
            f"{code}: top-1 accuracy {result.accuracy:.3f} on {result.num_val or result.num_train} "
            f"{split} examples ({result.num_classes} classes, chance {1 / result.num_classes:.3f}) "
            f"after {result.epochs} epochs in {result.seconds:.1f} s -> {result.weights}"
        )
    return 0
