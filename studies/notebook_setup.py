"""The first cell of every notebook in studies/notebooks: ``QUICK = setup()``.

* ``QUICK``: ``KBIT_NOTEBOOK_QUICK=1`` (set by tests/test_notebooks.py) keeps every cell to a few seconds;
* progress bars off (``KBIT_PROGRESS=0``) unless set, and wide pandas tables;
* figures: nothing here picks a matplotlib backend, so a Jupyter kernel keeps its inline backend and a
  study's figures are embedded in the notebook.
"""
from __future__ import annotations

import os


def setup(*, width: int = 160) -> bool:
    """Prepare a notebook session; returns QUICK."""
    import pandas as pd

    import workbench as wb
    quick = os.environ.get("KBIT_NOTEBOOK_QUICK", "0") == "1"
    os.environ.setdefault("KBIT_PROGRESS", "0")
    pd.set_option("display.width", width)
    print("quick" if quick else "full", "mode; workbench", wb.__version__)
    return quick
