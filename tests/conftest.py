import csv
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_file(path):
    """A checkpoint or best.pt as saved, whatever experiment wrote it."""
    return torch.load(path, map_location="cpu", weights_only=False)


def metrics_rows(path):
    """metrics.csv as lists of rows without its train_seconds column (wall-clock differs between runs)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{key: value for key, value in row.items() if key != "train_seconds"} for row in rows]
