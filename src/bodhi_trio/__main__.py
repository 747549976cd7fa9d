"""``python -m bodhi_trio``: the same as the ``bodhi-trio`` command."""

from __future__ import annotations

import sys

from bodhi_trio._cli import main

sys.exit(main())
