from __future__ import annotations

import sys

from spnas.cli import main

sys.exit(main())
