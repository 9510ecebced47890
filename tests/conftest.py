import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_file(path):
    """A checkpoint or best.pt as saved, whatever experiment wrote it."""
    return torch.load(path, map_location="cpu", weights_only=False)
