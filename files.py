"""Files written whole (a kill or a full disk never leaves a broken one): JSON,
figures, checkpoints with a checksum, and the metrics CSV."""
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import pickle
import sys
import zipfile

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils import fail  # noqa: E402


def _strict(data):
    """data with every NaN or infinity replaced by None (null), as strict JSON wants."""
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_file(path, write, mode="w", optional=False):
    """Write a file through write(f) into a temporary file, then rename it into place, so
    that a kill mid-write never leaves a broken file. A failed write (a full
    disk) removes the temporary file and stops the run in one line, exit code 1:
    the files written before, the last checkpoint among them, are intact. An
    optional file (a cache) that cannot be written returns the error instead."""
    # An optional file may be shared by runs (the data cache) and written by two at once:
    # each writes a temporary file of its own. A run's own files are its alone (its folder is locked).
    temporary = f"{path}.{os.getpid()}.tmp" if optional else path + ".tmp"
    try:
        with open(temporary, mode) as f:
            write(f)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if optional:
            return error
        fail(f"cannot write {path} ({error.strerror or error}); the files written before it are intact", code=1)
    return None


def make_folders(path):
    """os.makedirs(path); returns the folders it created, outermost first, for
    remove_empty_folders to take away after a failed start."""
    created, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


def remove_empty_folders(folders):
    """Remove those of the folders (outermost first) that are empty, innermost first."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:
            return


def save_json(data, path):
    """Strict JSON (NaN and infinity written as null), written then renamed."""
    write_file(path, lambda f: json.dump(_strict(data), f, indent=2, allow_nan=False))


def save_figure(fig, path):
    """A figure as a PNG, written then renamed."""
    fig.tight_layout()
    write_file(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def _digest(obj, digest):
    """Feed a checkpoint's contents (dicts, lists, tensors, plain values) into a hash."""
    if isinstance(obj, dict):
        digest.update(b"{")
        for key in sorted(obj, key=repr):
            digest.update(repr(key).encode())
            _digest(obj[key], digest)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"[{len(obj)}".encode())
        for value in obj:
            _digest(value, digest)
    elif isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(repr(obj).encode())
    return digest


def checksum(state):
    """SHA-256 of a checkpoint's contents, its "checksum" entry left out."""
    return _digest({k: v for k, v in state.items() if k != "checksum"}, hashlib.sha256()).hexdigest()


def save_checkpoint(state, path):
    """A checkpoint with the checksum of its contents, written then renamed
    (write_file): a kill mid-write never leaves a broken one, and a failed write
    stops the run in one line, the last checkpoint intact."""
    buffer = io.BytesIO()
    torch.save({**state, "checksum": checksum(state)}, buffer)
    write_file(path, lambda f: f.write(buffer.getbuffer()), mode="wb")


def load_checkpoint(path, experiment, required=()):
    """A checkpoint written by the `experiment` script (its "experiment" entry),
    whole (its checksum matches its contents) and holding the `required` keys."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        fail(f"{path} is damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
             f"resume from a copy or start a new run")
    if not isinstance(checkpoint, dict) or checkpoint.get("experiment") != experiment:
        fail(f"{path} belongs to another experiment, not {experiment}")
    if "checksum" not in checkpoint:  # written before checkpoints had one, or by other code
        print(f"warning: {path} has no checksum, so damage to its contents cannot be detected; "
              f"its tensors' shapes and types are still checked", file=sys.stderr)
    elif checkpoint["checksum"] != checksum(checkpoint):
        fail(f"{path} is damaged (its contents do not match their checksum); resume from a copy or start a new run")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        fail(f"{path} is damaged (it lacks {', '.join(missing)}); resume from a copy or start a new run")
    return checkpoint


class MetricsLog:
    """Append-only metrics CSV, flushed row by row. When a run resumes from a
    checkpoint, rows logged after that checkpoint are dropped first, so the
    file reads as one uninterrupted run."""

    def __init__(self, path, fields, resume_iteration=None):
        self.path, self.fields = path, fields
        rows = []
        if resume_iteration is not None and os.path.exists(path):
            rows = [r for r in _whole_rows(path, fields) if int(r["iteration"]) <= resume_iteration]

        def write(f):
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
        write_file(path, write)

    def log(self, **row):
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.fields).writerow(row)
        except OSError as error:
            fail(f"cannot write {self.path} ({error.strerror or error}); the files written before it are intact",
                 code=1)

    def read(self):
        return read_metrics(self.path)


def _whole_rows(path, fields):
    """The rows of a metrics CSV that a resume keeps: those whose line is whole
    (ends with a newline: a kill or a full disk can cut the last one) and holds a
    number, or nothing, in each column, an integer iteration first. Each other line
    is dropped with a one-line warning."""
    with open(path, newline="") as f:
        lines = f.read().split("\n")
    kept = []
    for number, line in enumerate(lines[1:-1], start=2):  # past the header; lines[-1] is cut or empty
        values = next(csv.reader([line]), [])
        if len(values) == len(fields) and _numbers(values) and values[0].isdigit():
            kept.append(dict(zip(fields, values)))
        else:
            print(f"warning: {path}: line {number} is not a whole row of numbers ({line[:40]!r}); dropped",
                  file=sys.stderr)
    if lines[-1]:
        print(f"warning: {path}: its last line was cut short ({lines[-1][:40]!r}); dropped", file=sys.stderr)
    return kept


def _numbers(values):
    """Whether every value that is not empty reads as a number."""
    try:
        [float(v) for v in values if v != ""]
    except ValueError:
        return False
    return True


def read_metrics(path):
    """The rows of a metrics CSV as floats, an empty cell as NaN."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
