"""Third-party warnings the command line silences: each one named by message, category and the
module that issues it, with why it is not ours to fix. Nothing else is filtered, and library
users (``import spnas``) see every warning; a command with ``-v`` shows these too.
"""

from __future__ import annotations

import warnings

#: ``(message regex, category, issuing module regex, why)``.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    (
        r"`torch\.jit\.script` is deprecated",
        FutureWarning,
        r"torch\.jit\._script",
        "fvcore.nn scripts its focal losses with torch.jit when imported (by detectron2.layers "
        "and by our FLOP counts); fvcore 0.1.5 is the last release",
    ),
    (
        r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing "
        r"argument",
        UserWarning,
        r"torch\.functional",
        "detectron2 0.6's anchor generator (_create_grid_offsets) calls torch.meshgrid without "
        "indexing; its 'ij' default is what it means",
    ),
)


def silence_known_warnings() -> None:
    """Ignore exactly the :data:`KNOWN_WARNINGS` in this process (and its forked children)."""
    for message, category, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
