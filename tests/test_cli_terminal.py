"""A quiet terminal: ``spnas … | head`` ends without a traceback, and the third-party warnings
spnas cannot fix are silenced at the command line, narrowly (by message, category and the
issuing module), while every other warning still shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from spnas.cli import EXIT_BROKEN_PIPE, silence_known_warnings
from spnas.cli._warnings import KNOWN_WARNINGS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}


def test_a_closed_pipe_ends_quietly_with_141():
    # The reader closes its end before spnas writes: every write then fails with EPIPE, as
    # when `head -1` has read its line and exited.
    process = subprocess.Popen(
        [sys.executable, "-m", "spnas", "flops", "BB(11,d1,d1,d1)", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_warnings()
        warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)
    return bool(caught)


@pytest.mark.parametrize(("pattern", "category", "module", "why"), KNOWN_WARNINGS)
def test_each_filter_is_narrow(pattern, category, module, why):
    assert why
    message = {
        FutureWarning: "`torch.jit.script` is deprecated. Please switch to `torch.compile`.",
        UserWarning: "torch.meshgrid: in an upcoming release, it will be required to pass the "
        "indexing argument.",
    }[category]
    issuer = module.replace("\\", "")
    assert not _shown(message, category, issuer)
    assert _shown(message, category, "spnas.modeling.flops")  # our own code: shown
    assert _shown(message, DeprecationWarning, issuer)  # another category: shown
    assert _shown("something else", category, issuer)  # another message: shown


SNIPPET = """
import sys
import spnas  # prepares a detectron2 installed without its compiled ops
if sys.argv[1] == "silenced":
    from spnas.cli import silence_known_warnings
    silence_known_warnings()
import detectron2.layers  # imports fvcore.nn, which scripts its losses with torch.jit
import torch
from detectron2.modeling.anchor_generator import _create_grid_offsets
_create_grid_offsets((2, 2), 4, 0.0, torch.device("cpu"))  # torch.meshgrid without indexing
"""


@pytest.mark.parametrize("mode", ["silenced", "plain"])
def test_the_real_third_party_warnings_are_the_ones_filtered(mode):
    pytest.importorskip("detectron2")
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", SNIPPET, mode],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=True,
    )
    found = [pattern for pattern, *_ in KNOWN_WARNINGS if re.search(pattern, result.stderr)]
    if mode == "silenced":
        assert "Warning" not in result.stderr, result.stderr
    else:  # without the filters both warnings show: the test above can fail
        assert "FutureWarning" in result.stderr and "UserWarning" in result.stderr
        assert len(found) == len(KNOWN_WARNINGS), result.stderr
