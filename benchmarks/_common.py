"""What every benchmark shares: the machine description and the JSON result file.

Each benchmark writes ``benchmarks/results/<name>.json``: its own figures, plus ``machine``
(CPU count, GPU, library versions) so that a figure is never quoted without where it was
measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The machine and software a result was measured with."""
    import optuna
    import torch
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
    }


def write_result(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``result`` (plus ``machine`` and a timestamp) to ``benchmarks/results/<name>.json``."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **result,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--json`` (print the result as JSON) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: results/)")
    return parser


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): overrides of every profile's study YAML, as
    ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a key of every profile's study YAML (e.g. {example})",
    )


def report(name: str, result: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the result file and print it (JSON with ``--json``, else one line per figure)."""
    path = write_result(name, result, args.out)
    if args.json:
        print(json.dumps(json.loads(path.read_text()), indent=2))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(value)}")
    print(f"written: {path}")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, min and max of ``values``."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }
