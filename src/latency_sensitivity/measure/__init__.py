"""Measurement: the cell job and what it measures (cell.py), its workers, and the other measuring jobs.

Nothing may reach a model hub at run time: every process that measures imports this package before it imports
transformers (a shared worker too), so the hub's libraries start offline unless the environment says otherwise.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
