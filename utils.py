"""Run machinery shared by both experiments, one block per concern: errors,
settings and the command line; run folders and resuming; files written whole;
signals; training progress; statistics and plots."""
import argparse
import atexit
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import shlex
import signal
import sys
import time
import tokenize
import zipfile
from types import SimpleNamespace

import matplotlib
import torch
import tqdm
from matplotlib import ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import distributed

# Keys that may be given anew when a run is resumed: where it and its data live,
# where and on how many threads it runs, how many tasks its final test uses, and its
# time budget. They are not part of a run's default folder name.
RESUME_FREE_KEYS = {"out_dir", "device", "threads", "data_dir", "test_tasks", "train_minutes"}
# Keys that say what this invocation does rather than what the run is.
INVOCATION_KEYS = {"resume", "eval_only"}


# ---- Errors, settings and the command line ---------------------------------------
def fail(message, code=2):
    """Stop with a one-line error: exit code 2 for bad input (before any work),
    1 for a failure mid-run (on a line of its own, after the progress bar)."""
    print(("\n" if code == 1 else "") + f"error: {message}", file=sys.stderr)
    sys.exit(code)


def check_settings(cfg, choices=None, at_least=None, positive=(), zero_is_off=None):
    """Stop in one line at the first setting out of its range: choices {key: allowed
    values}, at_least {key: minimum} (None, the paper's value to come, passes),
    positive (keys that must be > 0), zero_is_off {key: what 0 means} (>= 0)."""
    def flag(key):
        return "--" + key.replace("_", "-")
    for key, allowed in (choices or {}).items():
        if getattr(cfg, key) not in allowed:
            fail(f"{flag(key)} must be one of {', '.join(allowed)}, not {getattr(cfg, key)!r}")
    for key, minimum in (at_least or {}).items():
        if getattr(cfg, key) is not None and getattr(cfg, key) < minimum:
            fail(f"{flag(key)} must be at least {minimum}, got {getattr(cfg, key)}")
    for key in positive:
        if not getattr(cfg, key) > 0:
            fail(f"{flag(key)} must be positive, got {getattr(cfg, key)}")
    for key, off in (zero_is_off or {}).items():
        if getattr(cfg, key) < 0:
            fail(f"{flag(key)} must be 0 ({off}) or positive, got {getattr(cfg, key)}")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        fail(message)


def _parse_bool(text):
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def config_comments(script):
    """Help of each key of a script's `CONFIG = dict(...)` block, read with
    tokenize: {key: (section, comment)}. A key's comment is the one on its line,
    continued by comment lines below it indented deeper than the keys; comment
    lines at the keys' indentation name the section of the keys that follow."""
    with open(script, "rb") as f:
        tokens = list(tokenize.tokenize(f.readline))
    start = next(i for i, t in enumerate(tokens) if t.type == tokenize.NAME and t.string == "CONFIG" and t.start[1] == 0)
    help_texts, key, key_row, key_column, depth, section, heading = {}, None, 0, 0, 0, "", []
    for i in range(start, len(tokens)):
        token = tokens[i]
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and token.type == tokenize.NAME and tokens[i + 1].string == "=":
            section, heading = (" ".join(heading), []) if heading else (section, heading)
            key, key_row, key_column = token.string, token.start[0], token.start[1]
            help_texts[key] = (section, "")
        elif depth == 1 and token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if key is not None and not heading and (token.start[0] == key_row or token.start[1] > key_column):
                help_texts[key] = (section, f"{help_texts[key][1]} {text}".strip())
            else:
                heading.append(text)
    return help_texts


def parse_config(defaults, argv, description="", types=None, comments=None, none_means=None):
    """Override the plain values of `defaults` with `--name value` arguments
    (underscores written as dashes). A flag's type is its default's type, or
    types[key] for a default of None; a boolean may also be given bare
    (`--resume`); --help shows each flag in its section with its comment
    (config_comments) and default (none_means[key] for a default of None).
    Returns the config as a namespace and the set of keys given on the command line."""
    parser = _OneLineParser(description=description, argument_default=argparse.SUPPRESS,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = {"": parser}
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        section, comment = (comments or {}).get(key, ("", ""))
        if section not in sections:
            sections[section] = parser.add_argument_group(section)
        shown = (none_means or {}).get(key, "the paper's value") if default is None else repr(default)
        text = f"{comment} (default: {shown})".strip().replace("%", "%%")
        if isinstance(default, bool):
            sections[section].add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=text)
        else:
            value_type = type(default) if default is not None else types[key]
            sections[section].add_argument(flag, type=_finite_float if value_type is float else value_type,
                                           metavar=value_type.__name__.upper(), help=text)
    given = vars(parser.parse_args(argv))
    return SimpleNamespace(**{**defaults, **given}), set(given)


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


# ---- Run folders and resuming ----------------------------------------------------
_held_locks = {}  # run folder: its open lock file; a run holds its folder until its process ends


def prepare_run_dir(run_dir, resume):
    """Create the run folder and lock it for this process (the operating system
    drops the lock when the process ends, however it ends); refuse a folder that
    another run is using, a started run unless resuming, and a resume without a
    checkpoint. A folder made here that holds nothing when the process ends (a
    start that failed) is removed."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        fail(f"output folder {run_dir} is a file")
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if resume and not os.path.exists(checkpoint):
        fail(f"no checkpoint at {checkpoint} to continue from")
    if os.path.realpath(run_dir) not in _held_locks:
        if not os.path.exists(run_dir):
            atexit.register(_remove_if_unused, run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
            lock = open(os.path.join(run_dir, ".lock"), "w")
        except OSError as error:
            fail(f"cannot write in the output folder {run_dir}: {error.strerror}")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another run is using {run_dir} right now; wait for it or choose another --out-dir")
        _held_locks[os.path.realpath(run_dir)] = lock
    if not resume and os.path.exists(checkpoint):
        fail(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out-dir")
    return run_dir


def _remove_if_unused(run_dir):
    """Remove a run folder that holds nothing but its lock."""
    with contextlib.suppress(OSError):
        if set(os.listdir(run_dir)) <= {".lock"}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, ".lock"))
            os.rmdir(run_dir)


def open_run(run_dir, resuming, experiment, rank, world_size, required=()):
    """Process 0 prepares the run folder (prepare_run_dir) and, when resuming,
    loads the checkpoint of the experiment (load_checkpoint); every process gets
    the checkpoint (None for a new run)."""
    checkpoint = None
    if rank == 0:
        prepare_run_dir(run_dir, resuming)
        checkpoint = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"), experiment, required) \
            if resuming else None
        before = checkpoint["config"].get("world_size", 1) if checkpoint else world_size
        if before != world_size:
            print(f"resuming a run of {before} process(es) in {world_size}: the tasks are the same, "
                  f"the sums over them are added up in another order")
    return distributed.from_rank_zero(checkpoint, world_size)


def check_tasks_per_process(world_size, **task_counts):
    """Every process needs at least one task of each kind."""
    for key, count in task_counts.items():
        if world_size > count:
            fail(f"{world_size} processes cannot share --{key.replace('_', '-')} {count}: "
                 f"start at most {count} processes")


def default_run_dir(experiment, name, cfg, given, named_keys, also_free=frozenset()):
    """results/<experiment>/<name>, tagged with the settings given on the command
    line that the name does not already say (key=value), so that runs with other
    settings never land in the same folder. Settings that may change when the run
    is resumed (RESUME_FREE_KEYS and also_free, as for resumed_config) are not in
    the name: a run continued with more of them stays in its folder, named truly."""
    tags = [f"{key}={getattr(cfg, key)}"
            for key in sorted(given - named_keys - RESUME_FREE_KEYS - set(also_free) - INVOCATION_KEYS)]
    return os.path.join("results", experiment, "-".join([name, *tags]))


def resumed_config(checkpoint, cfg, given, defaults, also_free=frozenset()):
    """The saved run's config, with the keys that may change on resume (those
    of RESUME_FREE_KEYS and also_free) taken from the command line. Any other
    key given with a different value is an error, and so is a value at the top
    of the script (defaults) that was changed since the run started."""
    saved, free_keys = checkpoint["config"], RESUME_FREE_KEYS | set(also_free)
    for key in given - free_keys - INVOCATION_KEYS:
        if getattr(cfg, key) != saved[key]:
            fail(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from the resumed run's {saved[key]}")
    started_with = checkpoint.get("defaults", defaults)
    for key in sorted(defaults.keys() - given - free_keys - INVOCATION_KEYS):
        if key in started_with and defaults[key] != started_with[key]:
            fail(f"{key} = {defaults[key]!r} at the top of the script differs from {started_with[key]!r}, "
                 f"its value when the run started: put it back, or start a new run")
    free = {key: value for key, value in vars(cfg).items()
            if key in INVOCATION_KEYS or (key in free_keys and key in given)}
    added_since = {key: value for key, value in vars(cfg).items() if key not in saved}
    return SimpleNamespace(**{**added_since, **saved, **free})


# ---- Files written whole: JSON, figures, checkpoints -----------------------------
def _strict(data):
    """data with every NaN or infinity replaced by None (null), as strict JSON wants."""
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_file(path, write, mode="w"):
    """Write a file through write(f) into path.tmp, then rename it into place, so
    that a kill mid-write never leaves a broken file. A failed write (a full
    disk) removes the temporary file and stops the run in one line, exit code 1:
    the files written before, the last checkpoint among them, are intact."""
    try:
        with open(path + ".tmp", mode) as f:
            write(f)
        os.replace(path + ".tmp", path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        fail(f"cannot write {path} ({error.strerror or error}); the files written before it are intact", code=1)


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
    if "checksum" in checkpoint and checkpoint["checksum"] != checksum(checkpoint):
        fail(f"{path} is damaged (its contents do not match their checksum); resume from a copy or start a new run")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        fail(f"{path} is damaged (it lacks {', '.join(missing)}); resume from a copy or start a new run")
    return checkpoint


# ---- Signals: stop cleanly, say how to continue ----------------------------------
_stop_signal = []  # the signal that asked the run to stop, once one has
_stop_at_once = []  # once training is over: the line a signal prints as it stops the run at once


def stop_on_signals():
    """From now on SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after
    its current iteration (stop_requested); a second one stops at once, and so
    does the first after stop_at_once_from_now."""
    def request_stop(signum, frame):
        if _stop_signal or _stop_at_once:
            _say_stopped(_stop_at_once[0] if _stop_at_once else "")
            sys.exit(128 + signum)
        _stop_signal.append(signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def stop_requested():
    """The exit code a stop asked for by a signal ends with (130 for SIGINT, 143
    for SIGTERM), or 0 when no signal came."""
    return 128 + _stop_signal[0] if _stop_signal else 0


def _say_stopped(line):
    if line:
        for bar in list(tqdm.tqdm._instances):  # closed now, so that none is redrawn after the line
            bar.close()
        print(f"\n{line}", file=sys.stderr, flush=True)


def continue_command(script, argv, world_size, resume=True):
    """The command that continues this run: the same launcher, script and
    arguments, with --resume."""
    launcher = os.environ.get(distributed.LAUNCHER_ENV) or (
        "python" if world_size == 1 else f"torchrun --nproc-per-node {world_size}")
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    return " ".join([launcher, script, *map(shlex.quote, argv), *(["--resume"] if resume else [])])


def stop_if_requested(iteration, save, script, argv, rank, world_size, device):
    """At the top of a training iteration: when a signal has asked any process to
    stop, all stop here together; every process calls save() (process 0 writes
    the checkpoint), process 0 says how to continue, and every process exits
    with the signal's code."""
    code = distributed.largest(stop_requested(), world_size, device)
    if not code:
        return
    save()
    if rank == 0:
        _say_stopped(f"stopped at iteration {iteration}, checkpoint saved; "
                     f"continue with: {continue_command(script, argv, world_size)}")
    sys.exit(code)


def stop_at_once_from_now(script, argv, rank, world_size):
    """Once training is over and checkpointed (the final test follows), a signal
    stops the run at once, saying how to test it again."""
    evaluating_only = "--eval-only" in (sys.argv[1:] if argv is None else argv)
    line = (f"stopped during the final test; the run's training is complete and checkpointed; test it again "
            f"with: {continue_command(script, argv, world_size, resume=not evaluating_only)}") if rank == 0 else ""
    if _stop_signal:  # a signal came after the last iteration began
        _say_stopped(line)
        sys.exit(128 + _stop_signal[0])
    _stop_at_once[:] = [line]


def run_main(main, argv):
    """Run a script's main(argv) as a command: signals stop it cleanly
    (stop_on_signals), and a failed process group ends in one line, exit 1."""
    stop_on_signals()
    try:
        main(argv)
        distributed.finish()
    except distributed.ProcessFailure as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # not through the broken process group's destructors, which can abort


# ---- Training progress: metrics rows, expected time, divergence ------------------
class MetricsLog:
    """Append-only metrics CSV, flushed row by row. When a run resumes from a
    checkpoint, rows logged after that checkpoint are dropped first, so the
    file reads as one uninterrupted run."""

    def __init__(self, path, fields, resume_iteration=None):
        self.path, self.fields = path, fields
        rows = []
        if resume_iteration is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_iteration]
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


def read_metrics(path):
    """The rows of a metrics CSV as floats, an empty cell as NaN."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


class DurationForecast:
    """Says once (process 0 only), after the first `after` iterations of this
    invocation, how long the iterations left will take at the rate measured over them."""

    def __init__(self, start, total, rank=0, after=20):
        self.start, self.total, self.rank, self.after = start, total, rank, after
        self.clock = time.perf_counter()

    def update(self, done):
        if self.rank == 0 and done - self.start == self.after and done < self.total:
            per_iteration = (time.perf_counter() - self.clock) / self.after
            tqdm.tqdm.write(f"expected: ~{duration(per_iteration * (self.total - done))} for the "
                            f"{self.total - done:,} iterations left ({per_iteration:.3g} s per iteration over "
                            f"the first {self.after}; validation and test come on top)")


def duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def stop_diverged(what, last_checkpoint):
    """Stop a run whose training diverged, in one line (exit code 1), saying what
    is kept: its last checkpoint (at iteration last_checkpoint), if it has one."""
    kept = f"its last checkpoint (iteration {last_checkpoint}) is kept" if last_checkpoint else \
        "no checkpoint had been written yet"
    fail(f"training diverged: {what}; stopped, {kept}; a smaller --meta-lr or --inner-lr may help", code=1)


# ---- Statistics and plots --------------------------------------------------------
def summarize(per_task):
    """Per column of a (tasks, steps) tensor: the mean over the tasks whose value
    is finite and the half-width of its 95% normal confidence interval (1.96
    standard errors), the median over all tasks, and how many tasks diverged
    (NaN or infinite). Lists, one entry per column."""
    values = torch.as_tensor(per_task, dtype=torch.float64)
    finite = torch.isfinite(values)
    n = finite.sum(0)
    mean = torch.where(finite, values, 0).sum(0) / n
    variance = torch.where(finite, values - mean, 0).pow(2).sum(0) / (n - 1)
    median = torch.where(torch.isnan(values), math.inf, values).median(0).values  # NaN counts as diverged high
    return dict(mean=mean.tolist(), ci95=(1.96 * variance.sqrt() / n.sqrt()).tolist(), median=median.tolist(),
                diverged=(values.shape[0] - n).tolist())


def number(x):
    """A number for a table: 3 decimals, or 3 significant digits with an exponent when large."""
    return "n/a" if x is None else f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def percent(stats):
    """The mean and 95% CI of accuracies (fractions) as percentages, None kept."""
    return [[None if v is None else 100 * v for v in stats[key]] for key in ("mean", "ci95")]


def log_scale_if_possible(ax, axis="y"):
    """A log scale, with plain tick labels, on an axis whose positive finite data
    span more than a factor of 10; else a linear one (a narrow range, or a
    diverged run, still plots)."""
    data = [line.get_ydata() if axis == "y" else line.get_xdata() for line in ax.get_lines()]
    values = torch.cat([torch.as_tensor(d, dtype=torch.float64).flatten() for d in data]) if data else torch.zeros(0)
    values = values[torch.isfinite(values) & (values > 0)]
    if len(values) and values.max() > 10 * values.min():
        ax.set(**{f"{axis}scale": "log"})
        scale_axis = ax.yaxis if axis == "y" else ax.xaxis
        scale_axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        scale_axis.set_minor_formatter(ticker.NullFormatter())


LINE_STYLES = [dict(linestyle=style, marker=marker) for style, marker in
               (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "P"))]


def plot_with_ci(ax, mean, ci, label, **style):
    """A line over steps 0..S with its 95% confidence band."""
    steps = range(len(mean))
    mean, ci = (torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
                for values in (mean, ci))
    line, = ax.plot(steps, mean, **{"marker": "o", "markersize": 4, **style}, label=label)
    ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2, color=line.get_color())


def print_accuracy_by_step(stats, tasks, headline_step):
    """Test accuracy after each number of adaptation steps, as the paper's figures show it."""
    print(f"test accuracy (%) after each number of adaptation steps, mean ± 95% CI over {tasks} tasks:")
    for step, (mean, ci) in enumerate(zip(*percent(stats))):
        shown = "n/a" if mean is None or ci is None else f"{mean:6.2f} ± {ci:.2f}"
        print(f"  {step:>3} steps: {shown}" + ("  (the headline)" if step == headline_step else ""))
