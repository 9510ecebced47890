"""Small helpers every script uses: the one-line error, where a run runs
(device, threads), progress, and what to do as the process ends.

torch and tqdm are imported in the functions that use them: settings.py, and so a
script's --help, imports this module before anything imports torch (seconds on a
busy machine)."""
import atexit
import os
import sys
import time


def fail(message, code=2):
    """Stop with a one-line error: exit code 2 for bad input (before any work),
    1 for a failure mid-run (on a line of its own, after the progress bar). Bad
    input is the same in every process of a run, so only process 0 says it."""
    if code != 2 or os.environ.get("RANK", "0") == "0":
        sys.stderr.write(("\n" if code == 1 else "") + f"error: {message}\n")  # one write: lines never interleave
        sys.stderr.flush()
    sys.exit(code)


_exit_tasks = []


def at_exit(task):
    """Run task() as the process ends: at the interpreter's exit, or in
    run_exit_tasks when a process ends at once (distributed.finish)."""
    _exit_tasks.append(task)


@atexit.register
def run_exit_tasks():
    while _exit_tasks:
        _exit_tasks.pop()()


def cpu_times(path="/proc/stat"):
    """{cpu number: (busy ticks, all ticks)} since boot, from /proc/stat (busy: all but
    idle and waiting for I/O; guest time is inside user time, so 8 fields)."""
    times = {}
    with open(path) as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(field) for field in fields[:8]]
                times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def busy_cores(cores, seconds=0.25):
    """How many of `cores` (cpu numbers) other jobs keep busy now: the share of each not
    idle over `seconds` while this process sleeps, summed. The load average of the last
    minute would lag: just after a job ends it still counts most of it. That load
    average where /proc/stat is missing (not Linux)."""
    try:
        before = cpu_times()
        time.sleep(seconds)
        after = cpu_times()
    except OSError:
        return os.getloadavg()[0]
    return sum((after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in cores if c in after)


def use_threads(threads):
    """Set torch's thread count for this process to `threads`; for 0, OMP_NUM_THREADS
    if it is set, else one thread per core that other jobs leave free: the cores this
    process may use less those other jobs keep busy now (busy_cores), and at least one
    (on a busy machine a thread too many is many times slower; one too few, under 2x).
    Returns a line that says how many and why."""
    import torch
    if threads < 0:
        fail(f"--threads must be 0 (one per free core) or positive, got {threads}")
    if threads:
        torch.set_num_threads(threads)
        return f"{threads} thread(s) per process (--threads)"
    if "OMP_NUM_THREADS" in os.environ:
        return f"{torch.get_num_threads()} thread(s) per process (OMP_NUM_THREADS)"
    cores = os.sched_getaffinity(0)
    busy = busy_cores(cores)
    torch.set_num_threads(max(1, round(len(cores) - busy)))
    return (f"{torch.get_num_threads()} thread(s) per process: {len(cores)} core(s), {busy:.1f} busy with other "
            f"jobs (--threads N to choose)")


def pick_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def device_name(device, world_size):
    """The hardware a run trained on, for its results: GPU or CPU model, and processes."""
    import torch
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {world_size} process(es)"
    model = "CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {torch.get_num_threads()} thread(s) per process, {world_size} process(es)"


# ---- progress: a bar on a terminal, plain lines in a log file ----------------------
PLAIN_PROGRESS_SECONDS = 60  # between the lines of progress written where no terminal shows a bar


def progress(iterable, *, desc, total=None, initial=0, disable=False, transient=False, clock=None):
    """A tqdm progress bar on a terminal. Where the output is not a terminal (a log
    file), a bar's redraws would fill it: then a plain line every PLAIN_PROGRESS_SECONDS
    and one at the end, and none at all for a transient bar (validation, test); with
    clock (seconds of training so far), the lines say that time rather than the wall clock's."""
    import tqdm
    if disable or sys.stderr.isatty():
        return tqdm.tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, leave=not transient,
                         dynamic_ncols=True)
    if transient:
        return tqdm.tqdm(iterable, disable=True)
    return PlainProgress(iterable, desc, total, initial, clock)


class PlainProgress:
    """The part of tqdm's interface the scripts use, as plain lines on stderr."""

    def __init__(self, iterable, desc, total, initial, clock=None):
        self.iterable, self.desc, self.total, self.n, self.postfix = iterable, desc, total, initial, ""
        self.first, self.started = initial, time.monotonic()
        self.last_line = self.started
        self.clock, self.clock_start = clock, clock() if clock else None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            if time.monotonic() - self.last_line >= PLAIN_PROGRESS_SECONDS:
                self.line()

    def line(self):
        self.last_line = time.monotonic()
        seconds = self.clock() - self.clock_start if self.clock else self.last_line - self.started
        rate = (self.n - self.first) / seconds if seconds > 0 else 0.0
        after = f"{self.clock():.0f} s of training" if self.clock else f"{seconds:.0f} s"
        sys.stderr.write(f"{self.desc}: {self.n:,}/{self.total:,} after {after} ({rate:.3g} it/s)"
                         f"{self.postfix}\n")
        sys.stderr.flush()

    def set_postfix(self, **values):
        self.postfix = "; " + ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self):
        if self.n > self.first and self.last_line != -1:
            self.line()
        self.last_line = -1  # closed: said once
