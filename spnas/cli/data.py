"""``spnas data``: prepare detection data sets as COCO json.

Each action is one sub-parser of ``spnas data`` built by a ``_register_<action>`` function and
run by a ``_run_<action>`` function, which imports :mod:`spnas.data` lazily.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare detection data sets (COCO json)",
        description="Prepare detection data sets as COCO json plus an image root.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _register_synth(actions)


def _register_synth(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "synth",
        help="draw a synthetic shapes-detection data set",
        description=(
            "Draw a synthetic shapes-detection data set: OUT/train.json, OUT/val.json and PNG "
            "images under OUT/images (the json file_name entries are relative to OUT/images)."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--train", type=int, default=200, metavar="N", help="training images")
    parser.add_argument("--val", type=int, default=50, metavar="N", help="validation images")
    parser.add_argument("--size", type=int, default=128, metavar="PX", help="image side")
    parser.add_argument("--classes", type=int, default=4, metavar="K", help="shape classes")
    parser.add_argument(
        "--max-objects", type=int, default=6, metavar="N", help="most objects in one image"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from spnas.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(
        args.out,
        train=args.train,
        val=args.val,
        size=args.size,
        classes=args.classes,
        max_objects=args.max_objects,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    print(
        f"synthetic data: {dataset.num_train_images} train images "
        f"({dataset.num_train_annotations} boxes), {dataset.num_val_images} val images "
        f"({dataset.num_val_annotations} boxes), {len(dataset.class_names)} classes "
        f"({', '.join(dataset.class_names)}), {dataset.image_size} px -> "
        f"{dataset.train_json}, {dataset.val_json}, images under {dataset.image_root}"
    )
    return 0
