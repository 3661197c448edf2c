"""Test-wide setup: the helper modules that start our daemons as processes are importable by name
(``from slpda_process import Slpda``) from any test, whichever test pytest collects first."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for helpers in ("integration/slpda", "integration/saproxy", "integration/mn"):
    path = str(_HERE / helpers)
    if path not in sys.path:
        sys.path.append(path)
