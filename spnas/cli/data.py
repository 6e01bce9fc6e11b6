"""``spnas data``: prepare detection data sets as COCO json.

Each action is one sub-parser of ``spnas data`` built by a ``_register_<action>`` function and
run by a ``_run_<action>`` function, which imports :mod:`spnas.data` lazily.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spnas.data.coco import DatasetSplits


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare detection data sets (COCO json)",
        description="Prepare detection data sets as COCO json plus an image root.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _register_synth(actions)
    _register_coco(actions)
    _register_voc2coco(actions)
    _register_bdd2coco(actions)
    _register_ecp2coco(actions)


def _register_synth(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "synth",
        help="draw a synthetic shapes-detection data set",
        description=(
            "Draw a synthetic shapes-detection data set: OUT/train.json, OUT/val.json and PNG "
            "images under OUT/images (the json file_name entries are relative to OUT/images). "
            "A profile sets the object sizes, counts and classes: shapes (the default: 1-6 "
            "shapes of 6 px to half the image), small-objects (8-20 shapes of 4-12 px) or "
            "large-objects (1-3 shapes of 40-95 % of the image whose classes differ by a "
            "thin-walled hole); see spnas.data.PROFILES."
        ),
    )
    parser.add_argument(
        "--profile",
        default="shapes",
        metavar="NAME",
        help="generator profile (default: shapes)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--train", type=int, default=200, metavar="N", help="training images")
    parser.add_argument("--val", type=int, default=50, metavar="N", help="validation images")
    parser.add_argument("--size", type=int, default=128, metavar="PX", help="image side")
    parser.add_argument("--classes", type=int, default=4, metavar="K", help="shape classes")
    parser.add_argument(
        "--max-objects",
        type=int,
        default=None,
        metavar="N",
        help="most objects in one image (default: the profile's, 6 for shapes)",
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
        profile=args.profile,
        show_progress=not args.no_progress,
    )
    print(
        f"synthetic data ({dataset.profile}): {dataset.num_train_images} train images "
        f"({dataset.num_train_annotations} boxes), {dataset.num_val_images} val images "
        f"({dataset.num_val_annotations} boxes), {len(dataset.class_names)} classes "
        f"({', '.join(dataset.class_names)}), {dataset.image_size} px -> "
        f"{dataset.train_json}, {dataset.val_json}, images under {dataset.image_root}"
    )
    return 0


def _add_copy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--copy",
        action="store_true",
        help="copy the images into OUT/images (default: symlink them, absolute targets)",
    )


def _print_summary(name: str, splits: DatasetSplits) -> None:
    """One line: images, boxes and ignore regions per split, classes, where."""
    parts = []
    for split in ("train", "val"):
        dataset = splits.load(split)
        crowd = sum(sum(img.iscrowd) for img in dataset.images)
        parts.append(
            f"{len(dataset)} {split} images ({dataset.num_annotations} boxes, {crowd} ignore)"
        )
    classes = f"{len(dataset.class_names)} classes"
    if len(dataset.class_names) <= 10:
        classes += f" ({', '.join(dataset.class_names)})"
    print(
        f"{name}: {', '.join(parts)}, {classes} -> {splits.train_json}, {splits.val_json}, "
        f"images under {splits.image_root}"
    )


def _register_coco(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "coco",
        help="make COCO as it ships (train2017/, val2017/, annotations/) a data set directory",
        description=(
            "Make OUT a data set directory of the COCO release in --coco (TRAIN/ and VAL/ image "
            "folders, annotations/instances_TRAIN.json and instances_VAL.json): OUT/train.json "
            "and OUT/val.json are the annotation files with file_name prefixed by the image "
            "folder, and OUT/images/TRAIN, OUT/images/VAL link to the image folders (no image "
            "is copied)."
        ),
    )
    parser.add_argument("--coco", required=True, metavar="DIR", help="the COCO folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--train", default="train2017", metavar="NAME", help="training split (default: train2017)"
    )
    parser.add_argument(
        "--val", default="val2017", metavar="NAME", help="validation split (default: val2017)"
    )
    parser.set_defaults(func=_run_coco)


def _run_coco(args: argparse.Namespace) -> int:
    from spnas.data.coco_layout import link_coco

    splits = link_coco(args.coco, args.out, train=args.train, val=args.val)
    _print_summary(f"COCO {args.train} -> {args.val}", splits)
    return 0


def _register_voc2coco(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "voc2coco",
        help="convert Pascal VOC (VOCdevkit) to a COCO data set directory",
        description=(
            "Convert Pascal VOC image sets to OUT/train.json, OUT/val.json and images under "
            "OUT/images/<split>/VOC<year>/. Difficult objects become iscrowd=1 ignore regions "
            "(the VOC protocol) unless --keep-difficult."
        ),
    )
    parser.add_argument(
        "--voc", required=True, metavar="DIR", help="VOCdevkit (or one VOC<year>) folder"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--train",
        default="2007:trainval",
        metavar="SETS",
        help="training image sets, YEAR:SET[,YEAR:SET...] (default: 2007:trainval)",
    )
    parser.add_argument(
        "--val",
        default="2007:test",
        metavar="SETS",
        help="validation image sets (default: 2007:test)",
    )
    parser.add_argument(
        "--keep-difficult",
        action="store_true",
        help="keep difficult objects as ordinary boxes instead of ignore regions",
    )
    _add_copy(parser)
    parser.set_defaults(func=_run_voc2coco)


def _run_voc2coco(args: argparse.Namespace) -> int:
    from spnas.data.voc import parse_voc_sets, voc_to_coco

    splits = voc_to_coco(
        args.voc,
        args.out,
        train_sets=parse_voc_sets(args.train),
        val_sets=parse_voc_sets(args.val),
        use_difficult=args.keep_difficult,
        link_images=not args.copy,
    )
    _print_summary(f"Pascal VOC {args.train} -> {args.val}", splits)
    return 0


def _register_bdd2coco(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "bdd2coco",
        help="convert BDD100K (2018) detection labels to a COCO data set directory",
        description=(
            "Convert the BDD100K detection labels (bdd100k_labels_images_{train,val}.json; "
            "lane and drivable-area labels are skipped) to OUT/train.json, OUT/val.json and "
            "images under OUT/images/<split>/. Give --bdd for the standard layout, or the four "
            "paths (which override it)."
        ),
    )
    parser.add_argument(
        "--bdd",
        metavar="DIR",
        help="bdd100k folder: labels/bdd100k_labels_images_<split>.json, images/100k/<split>",
    )
    parser.add_argument("--labels-train", metavar="FILE", help="training label json")
    parser.add_argument("--labels-val", metavar="FILE", help="validation label json")
    parser.add_argument("--images-train", metavar="DIR", help="training image folder")
    parser.add_argument("--images-val", metavar="DIR", help="validation image folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--assume-size",
        action="store_true",
        help="assume 1280x720 images instead of reading each image's size",
    )
    _add_copy(parser)
    parser.set_defaults(func=_run_bdd2coco)


def _run_bdd2coco(args: argparse.Namespace) -> int:
    from spnas.data.bdd import bdd_to_coco

    splits = bdd_to_coco(
        args.bdd,
        args.out,
        labels_train=args.labels_train,
        labels_val=args.labels_val,
        images_train=args.images_train,
        images_val=args.images_val,
        read_sizes=not args.assume_size,
        link_images=not args.copy,
    )
    _print_summary("BDD100K", splits)
    return 0


def _register_ecp2coco(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "ecp2coco",
        help="convert EuroCity Persons to a COCO data set directory",
        description=(
            "Convert EuroCity Persons (classes pedestrian and rider; far-away person and "
            "rider groups become iscrowd=1 ignore regions; vehicles are skipped) to "
            "OUT/train.json, OUT/val.json and images under OUT/images/<split>/<time>/."
        ),
    )
    parser.add_argument(
        "--ecp", required=True, metavar="DIR", help="ECP folder (holding day/ and night/)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--time",
        default="day",
        metavar="TIME",
        help="day, night or day,night (default: day)",
    )
    _add_copy(parser)
    parser.set_defaults(func=_run_ecp2coco)


def _run_ecp2coco(args: argparse.Namespace) -> int:
    from spnas.data.ecp import ecp_to_coco

    splits = ecp_to_coco(args.ecp, args.out, times=args.time, link_images=not args.copy)
    _print_summary(f"EuroCity Persons ({args.time})", splits)
    return 0
