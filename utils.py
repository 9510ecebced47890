"""Small helpers every script uses: the one-line error, and where a run runs
(device, threads)."""
import os
import sys

import torch


def fail(message, code=2):
    """Stop with a one-line error: exit code 2 for bad input (before any work),
    1 for a failure mid-run (on a line of its own, after the progress bar)."""
    print(("\n" if code == 1 else "") + f"error: {message}", file=sys.stderr)
    sys.exit(code)


def use_threads(threads):
    """torch's thread count for this process: `threads`, or torch's default (one per
    core, or OMP_NUM_THREADS) for 0."""
    if threads:
        torch.set_num_threads(threads)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def device_name(device, world_size):
    """The hardware a run trained on, for its results: GPU or CPU model, and processes."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {world_size} process(es)"
    model = "CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {torch.get_num_threads()} thread(s) per process, {world_size} process(es)"
