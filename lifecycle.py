"""A training run's life, the same for both scripts: its folder, resuming it, its
checkpoints, signals, time budget, metrics rows and divergence. A script says
what the run is, what to keep, and what each iteration measured:

    run = lifecycle.Run("sinusoid", __file__, argv, cfg, given, CONFIG, device=..., folder=..., ...)
    run.start()                                    # prints and saves the config
    run.track(params=params, optimizer=optimizer)  # checkpointed; restored when resuming
    for iteration in run.iterations(cfg.meta_iterations, recorded=("loss",), log_every=..., checkpoint_every=...):
        loss = ...                                 # the experiment
        due = run.record(loss=loss)                # due.checkpoint: validate now (run.validated) if the run does

One rule per concern (docs/overnight.md has them as a table):
- folder: results/<experiment>/<name> unless --out-dir, locked while a run uses
  it; a new run refuses a folder that holds one, --resume needs its checkpoint.
- resume: the saved config, with only RESUME_FREE_KEYS (and the script's own
  free keys) given anew; a value changed at the top of the script is refused.
- checkpoint: every checkpoint_every iterations, at the end, and when a signal
  or the time budget stops the run; it holds everything tracked, the metric
  windows of every process and the best validated parameters (also in best.pt).
- rows: the mean of each recorded value over the iterations since the last
  row, summed over processes (each holds its share of a meta-batch mean); a row
  every log_every iterations, at every checkpoint and test, and at the end.
- time: training time excludes the tests of the curve (run.untimed) and
  everything after training; the budget (train_minutes) is checked after each
  iteration in one process, at each row in several, which then stop together.
- divergence: a recorded value that is not finite, found at the next row, stops
  the run in one line naming its first iteration, keeping the last checkpoint;
  so does a validation on which every task diverged.
- signals: the first Ctrl-C or SIGTERM stops every process after the current
  iteration with a checkpoint (signals.py).
- writing: process 0 writes every file.
"""
import contextlib
import fcntl
import json
import math
import os
import time
from types import SimpleNamespace
from typing import NamedTuple

import torch
import tqdm

import distributed
import files
import settings
import signals
from utils import at_exit, fail, progress, use_threads

# Keys that may be given anew when a run is resumed: where it and its data live,
# where and on how many threads it runs, how many tasks its final test uses, and its
# time budget. They are not part of a run's default folder name.
RESUME_FREE_KEYS = {"out_dir", "device", "threads", "data_dir", "test_tasks", "train_minutes"}
# Keys that say what this invocation does rather than what the run is.
INVOCATION_KEYS = {"resume", "eval_only"}
NO_BEST = dict(accuracy=-1.0, iteration=0, params=None)  # best.pt's form: validation accuracy, iteration, parameters


# ---- Run folders and resuming ----------------------------------------------------
_held_locks = {}  # run folder: its open lock file; a run holds its folder until its process ends


def prepare_run_dir(run_dir, resume):
    """Create the run folder and lock it for this process (the operating system
    drops the lock when the process ends, however it ends); refuse a folder that
    another run is using, a started run unless resuming, and a resume without a
    checkpoint. As the process ends, the lock file goes, and so do the folders
    made here if the run wrote nothing into them (a start that failed)."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        fail(f"output folder {run_dir} is a file")
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if resume and not os.path.exists(checkpoint):
        fail(f"no checkpoint at {checkpoint} to continue from")
    if os.path.realpath(run_dir) not in _held_locks:
        try:
            created = files.make_folders(run_dir)
            lock = _lock(os.path.join(run_dir, ".lock"))
        except OSError as error:
            fail(f"cannot write in the output folder {run_dir}: {error.strerror}")
        if lock is None:
            fail(f"another run is using {run_dir} right now; wait for it or choose another --out-dir")
        _held_locks[os.path.realpath(run_dir)] = lock
        at_exit(lambda: _release(run_dir, lock, created))
    if not resume and os.path.exists(checkpoint):
        fail(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out-dir")
    return run_dir


def _lock(path):
    """The lock file at path, opened and locked by this process; None when another holds it."""
    while True:
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        lock.close()  # its run removed it as it ended, after we opened it: lock the new one


def _release(run_dir, lock, created):
    """As the process ends: remove the lock file (still holding the lock, so no other
    run can hold a lock on the file removed), and the folders made for the run if it
    wrote nothing into them."""
    with contextlib.suppress(OSError):
        os.remove(os.path.join(run_dir, ".lock"))
    lock.close()
    files.remove_empty_folders(created)


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


# ---- Time: training time so far, and the time left -------------------------------
class Stopwatch:
    """Training time so far: the seconds since it started, plus those of earlier
    invocations of the run, less the spans run under untimed(); fixed once stopped."""

    def __init__(self, seconds_before=0.0):
        self.since, self.stopped_at = time.perf_counter() - seconds_before, None

    def seconds(self):
        return self.stopped_at if self.stopped_at is not None else time.perf_counter() - self.since

    def stop(self):
        self.stopped_at = self.seconds()

    @contextlib.contextmanager
    def untimed(self):
        paused = time.perf_counter()
        yield
        self.since += time.perf_counter() - paused


class DurationForecast:
    """Says once (process 0 only), after the first `after` iterations of this
    invocation, how long the iterations left will take at the rate measured over them,
    or the time budget left (budget_left(), seconds; None: no budget) where that is less."""

    def __init__(self, start, total, rank=0, after=20, budget_left=None):
        self.start, self.total, self.rank, self.after, self.budget_left = start, total, rank, after, budget_left
        self.clock = time.perf_counter()

    def update(self, done):
        if self.rank == 0 and done - self.start == self.after and done < self.total:
            per_iteration = (time.perf_counter() - self.clock) / self.after
            left = self.total - done
            rate = f"{per_iteration:.3g} s per iteration over the first {self.after}; validation and test come on top"
            budget = self.budget_left() if self.budget_left else math.inf
            if budget < per_iteration * left:
                tqdm.tqdm.write(f"expected: ~{duration(budget)}, when --train-minutes stops the run after about "
                                f"{int(budget / per_iteration):,} of the {left:,} iterations left ({rate})")
            else:
                tqdm.tqdm.write(f"expected: ~{duration(per_iteration * left)} for the {left:,} iterations left "
                                f"({rate})")


def duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def stop_diverged(what, last_checkpoint):
    """Stop a run whose training diverged, in one line (exit code 1), saying what
    is kept: its last checkpoint (at iteration last_checkpoint), if it has one."""
    kept = f"its last checkpoint (iteration {last_checkpoint}) is kept" if last_checkpoint else \
        "no checkpoint had been written yet"
    fail(f"training diverged: {what}; stopped, {kept}; a smaller --meta-lr or --inner-lr may help", code=1)


# ---- Checkpointed state: parameter lists, optimizers, random generators ---------
def state_of(value):
    """What a checkpoint keeps of a tracked value."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if hasattr(value, "state_dict"):
        return value.state_dict()
    return [p.detach().cpu() for p in value]


def _tensors_differ(saved, built):
    """How a saved list of tensors differs from the one the run builds, or None."""
    if not isinstance(saved, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in saved):
        return "it is not a list of tensors"
    if len(saved) != len(built):
        return f"{len(saved)} tensors where the run has {len(built)}"
    for i, (s, b) in enumerate(zip(saved, built)):
        if s.shape != b.shape or s.dtype != b.dtype:
            return (f"tensor {i} is {s.dtype} {tuple(s.shape)} where the run's is "
                    f"{b.dtype} {tuple(b.shape)}")
    return None


def _optimizer_differs(saved, optimizer):
    """How a saved optimizer state differs from the optimizer of the run's parameters, or None."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or "param_groups" not in saved:
        return "it is not an optimizer's state"
    for index, state in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            return f"it holds state for a parameter {index!r} the run does not have"
        for name, value in state.items():
            if name != "step" and isinstance(value, torch.Tensor) and value.shape != params[index].shape:
                return f"its {name} of parameter {index} is {tuple(value.shape)}, not {tuple(params[index].shape)}"
    return None


def restore(value, saved):
    """Put a checkpoint's state_of(value) back into value, in place; a state that
    does not fit value is a one-line refusal naming what differs."""
    if isinstance(value, torch.Generator):
        try:
            value.set_state(saved)
        except (RuntimeError, TypeError) as error:
            return f"not a random generator's state ({str(error).splitlines()[0]})"
    elif hasattr(value, "load_state_dict"):
        problem = _optimizer_differs(saved, value)
        if problem:
            return problem
        try:
            value.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            return f"it does not fit the run's optimizer ({str(error).splitlines()[0]})"
    else:
        problem = _tensors_differ(saved, value)
        if problem:
            return problem
        with torch.no_grad():
            for p, s in zip(value, saved):
                p.copy_(s)
    return None


def restored_window(values, device):
    """A metric window from a checkpoint, as tensors on the device (windows saved
    as Python numbers become float64, exactly)."""
    return [(v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64)).to(device) for v in values]


# ---- The run ---------------------------------------------------------------------
class Due(NamedTuple):
    """What the iteration that was just recorded is due for, before the run writes its row."""
    checkpoint: bool = False  # a checkpoint (a script that validates does it now, run.validated)
    test: bool = False  # a test of the current parameters for the curve in metrics.csv


class Run:
    """One training run: made (or resumed) here, trained through iterations(),
    tested after it. Attributes: rank, world_size, device, dir, cfg (the resumed
    run's settings), iteration and train_seconds (of the last checkpoint), best
    (dict(accuracy, iteration, params) of the best validation), results_name."""

    def __init__(self, experiment, script, argv, cfg, given, defaults, *, device, folder, named_keys,
                 shared_tasks, threads=0, free_on_resume=lambda config: set(), free_when_testing=()):
        """experiment: its name (results/<experiment>/, a checkpoint's owner); script
        and argv: for the command that continues a stopped run; folder: the default
        folder's name, named_keys the settings it says; shared_tasks: {setting: tasks}
        that the processes share out; threads: torch's threads in this process (0:
        torch's default); free_on_resume(config): the settings that a run with these
        settings (a dict; the saved run's when resuming) may change on resume;
        free_when_testing: those an --eval-only may change, which then writes
        results-<key>=<value>.json beside the run's own."""
        self.experiment, self.script, self.argv = experiment, os.path.basename(script), argv
        self.threads_line = use_threads(threads)
        self.rank, self.world_size, self.device = distributed.setup(device)  # 1 process unless launched with more
        settings.check_tasks_per_process(self.world_size, **shared_tasks)
        self.meta_batch_size = shared_tasks.get("meta_batch_size")
        self.dir = cfg.out_dir or default_run_dir(experiment, folder, cfg, given, named_keys,
                                                  also_free=free_on_resume(vars(cfg)))
        self.evaluating_only = getattr(cfg, "eval_only", False)
        self.checkpoint = None
        if self.rank == 0:
            prepare_run_dir(self.dir, cfg.resume or self.evaluating_only)
            if cfg.resume or self.evaluating_only:
                self.checkpoint = files.load_checkpoint(self.path("checkpoint.pt"), experiment,
                                                        required=("config", "iteration", "train_seconds"))
        self.checkpoint = distributed.from_rank_zero(self.checkpoint, self.world_size)
        retest = {}
        if self.checkpoint:
            before = self.checkpoint["config"].get("world_size", 1)
            if before != self.world_size and self.rank == 0:
                print(f"resuming a run of {before} process(es) in {self.world_size}: the tasks are the same, "
                      f"the sums over them are added up in another order")
            free = free_on_resume(self.checkpoint["config"]) | set(free_when_testing if self.evaluating_only else ())
            cfg = resumed_config(self.checkpoint, cfg, given, defaults, also_free=free)
            retest = {key: getattr(cfg, key) for key in free_when_testing
                      if self.evaluating_only and getattr(cfg, key) != self.checkpoint["config"][key]}
        self.results_name = "-".join(["results", *(f"{key}={value}" for key, value in retest.items())])
        cfg.out_dir, cfg.world_size = self.dir, self.world_size
        self.cfg, self.defaults = cfg, defaults
        self.iteration = self.checkpoint["iteration"] if self.checkpoint else 0
        self.train_seconds = self.checkpoint["train_seconds"] if self.checkpoint else 0.0
        self.best = self.checkpoint.get("best", NO_BEST) if self.checkpoint else NO_BEST
        self.tracked, self.row = {}, None

    def path(self, name):
        return os.path.join(self.dir, name)

    # ---- the processes of the run: each works on its share of the tasks (one process: all of them)
    def share(self, n_tasks):
        """This process's slice of n tasks that every process draws alike."""
        return distributed.share(n_tasks, self.rank, self.world_size)

    def take_share(self, tensors):
        """This process's share of tensors that have a leading task dimension."""
        return distributed.take_share(tensors, self.rank, self.world_size)

    def gather(self, rows):
        """Every process's rows (per task, from take_share or share), joined in task order."""
        return distributed.gather_rows(rows, self.world_size)

    def sum_across(self, tensors):
        """The tensors summed over the processes."""
        return distributed.sum_across(tensors, self.world_size)

    def first_process_first(self):
        """A context whose block process 0 runs before the others (building a cache)."""
        return distributed.rank_zero_first(self.rank, self.world_size)

    def start(self, *lines):
        """Say what runs (its settings, folder, the given lines; process 0) and save
        its config.json, unless the folder holds results: its config.json then stays
        the one of those results until save_results (a continuation stopped before
        its end leaves the folder as it was)."""
        if self.rank > 0:
            return
        print(json.dumps(vars(self.cfg), indent=2))
        print(f"run folder: {self.dir}")
        for line in (self.threads_line, *lines):
            print(line)
        if self.checkpoint:
            print(f"testing the run of {self.iteration} iterations" if self.evaluating_only
                  else f"resumed from iteration {self.iteration}")
        if not (self.evaluating_only or os.path.exists(self.path("results.json"))):
            files.save_json(vars(self.cfg), self.path("config.json"))

    def save_results(self, results):
        """Write the run's results (results.json, or its results_name for --eval-only
        with other test settings) and, but for --eval-only, the config.json they belong to."""
        if not self.evaluating_only:
            files.save_json(vars(self.cfg), self.path("config.json"))
        files.save_json(results, self.path(self.results_name + ".json"))

    def _restore_best(self):
        """The checkpoint's best validated parameters, checked against the tracked
        params; best.pt rewritten from them (a kill just after a checkpoint leaves it stale)."""
        best = self.checkpoint.get("best")
        if not isinstance(best, dict) or not {"accuracy", "iteration", "params"} <= best.keys():
            problem = "it lacks best" if best is None else "its best is not (accuracy, iteration, params)"
            fail(f"{self.path('checkpoint.pt')} is damaged ({problem}); resume from a copy or start a new run")
        problem = best["params"] is not None and _tensors_differ(best["params"], self.tracked["params"])
        if problem:
            fail(f"{self.path('checkpoint.pt')} does not fit this run: its best params: {problem}; "
                 f"resume from a copy or start a new run")
        if self.rank == 0:
            files.save_checkpoint(self.best, self.path("best.pt"))

    def track(self, **values):
        """What each checkpoint keeps under these names: parameter lists,
        optimizers, random generators. Restored from the checkpoint when resuming."""
        self.tracked.update(values)
        if self.checkpoint:
            missing = [key for key in values if key not in self.checkpoint]
            if missing:
                fail(f"{self.path('checkpoint.pt')} is damaged (it lacks {', '.join(missing)}); "
                     f"resume from a copy or start a new run")
            for key, value in values.items():
                problem = restore(value, self.checkpoint[key])
                if problem:
                    fail(f"{self.path('checkpoint.pt')} does not fit this run: its {key}: {problem}; "
                         f"resume from a copy or start a new run")

    # ---- the training loop's side of the run ----
    def iterations(self, total, *, recorded, evaluated=(), same_in_every_process=(), own_task_means=(), log_every,
                   checkpoint_every, test_every=0, train_minutes=0.0, description):
        """The iterations left of `total`: from the checkpoint's on a resume, none
        for --eval-only or a spent time budget. Each iteration must record() its
        values. `recorded` names them (in order), `evaluated` names the other
        columns of metrics.csv; a recorded value is this process's share of a
        meta-batch mean unless named in same_in_every_process (every process holds
        it whole: averaged, not summed) or own_task_means (a mean over this process's
        own tasks of the meta-batch: weighted by its share of them)."""
        self.recorded, self.evaluated, self.same_in_every_process = recorded, evaluated, same_in_every_process
        my_tasks = self.share(self.meta_batch_size) if own_task_means else None
        self.own_share = {name: (my_tasks.stop - my_tasks.start) / self.meta_batch_size for name in own_task_means}
        self.keeps_best = "validation_accuracy" in evaluated
        if self.keeps_best and self.checkpoint:
            self._restore_best()
        self.total, self.log_every, self.checkpoint_every = total, log_every, checkpoint_every
        self.test_every, self.budget = test_every, 60 * train_minutes
        if self.rank == 0:
            columns = ["iteration", "train_seconds", *recorded, *evaluated]
            self.metrics = files.MetricsLog(self.path("metrics.csv"), columns,
                                            resume_iteration=self.iteration if self.checkpoint else None)
        if self.checkpoint and not {"windows", "window"} & self.checkpoint.keys():  # the next row needs them
            fail(f"{self.path('checkpoint.pt')} is damaged (it lacks windows); resume from a copy or start a new run")
        windows = distributed.own_window(self.checkpoint, self.rank, self.world_size, metrics=len(recorded),
                                         replicated=[recorded.index(name) for name in same_in_every_process])
        self.windows = {name: restored_window(values, self.device) for name, values in zip(recorded, windows)}
        budget_spent = 0 < self.budget <= self.train_seconds
        if budget_spent and self.rank == 0 and not self.evaluating_only:
            print(f"--train-minutes {train_minutes}: the run's budget is spent; testing it again")
        training = not (self.evaluating_only or budget_spent)
        start = self.iteration
        self.stopwatch = Stopwatch(self.train_seconds)
        self.progress = progress(range(start, total if training else start), initial=start, total=total,
                                 desc=description, disable=self.rank > 0 or not training, clock=self.stopwatch.seconds)
        self.forecast = DurationForecast(start, total, self.rank, after=log_every,
                                         budget_left=(lambda: self.budget - self.stopwatch.seconds()) if self.budget
                                         else None)
        for iteration in self.progress:
            signals.stop_if_requested(iteration, lambda: self._save_checkpoint(iteration), self.script, self.argv,
                                      self.rank, self.world_size, self.device)
            self.done, self.row, self.due = iteration + 1, None, Due()
            yield iteration
            if self.row is not None and self._end_row():
                self.progress.n = self.done  # the bar counts an iteration when the next one starts
                self.progress.close()
                if self.rank == 0:
                    print(f"\n--train-minutes {train_minutes}: stopped after iteration {self.done}, "
                          f"{self.train_seconds:.0f} s of training")
                break
        self.progress.close()
        signals.stop_at_once_from_now(self.script, self.argv, self.rank, self.world_size)

    def record(self, **values):
        """This iteration's values (tensors: this process's share of a meta-batch
        mean, or a whole value for same_in_every_process), kept until the next row.
        Returns what is due now (Due); a row is then open for log() and validated()."""
        for name, value in values.items():
            self.windows[name].append(value.detach() * self.own_share[name] if name in self.own_share
                                      else value.detach())
        self.forecast.update(self.done)
        over_budget = 0 < self.budget <= self.stopwatch.seconds()
        out_of_time = over_budget and self.world_size == 1  # several processes agree to stop at a row
        checkpoint = self.done % self.checkpoint_every == 0 or self.done == self.total or out_of_time
        test = self.test_every > 0 and (self.done % self.test_every == 0 or self.done == self.total)
        if not (checkpoint or test or self.done % self.log_every == 0):
            return self.due
        windows = {name: torch.stack(window) for name, window in self.windows.items()}
        self._stop_if_not_finite(windows)
        means = {name: window.mean() for name, window in windows.items()}
        summed = [name for name in self.recorded if name not in self.same_in_every_process]
        *sums, stop = distributed.sum_across(
            [means[name] for name in summed] + [torch.tensor(float(over_budget), device=self.device)],
            self.world_size)
        means.update(zip(summed, sums))
        self.out_of_time = stop.item() > 0
        self.row = dict(iteration=self.done, train_seconds=round(self.stopwatch.seconds(), 2),
                        **{name: mean.item() for name, mean in means.items()}, **{name: "" for name in self.evaluated})
        self.windows = {name: [] for name in self.windows}
        self.due = Due(checkpoint=checkpoint or self.out_of_time,
                       test=test or (self.out_of_time and self.test_every > 0))
        return self.due

    def _stop_if_not_finite(self, windows):
        for name, window in windows.items():
            finite = torch.isfinite(window)
            if not finite.all():  # the same iteration in every process: they share parameters
                first = self.done - len(window) + 1 + int((~finite).nonzero()[0])
                stop_diverged(f"{name.replace('_', ' ')} is not finite at iteration {first}", self.iteration)

    def log(self, **values):
        """Values of the row open now (columns named in `evaluated`)."""
        self.row.update(values)

    def validated(self, accuracy, params):
        """A validation accuracy for the row open now; params become the best if
        it is the best yet. NaN (every validation task diverged) stops the run."""
        if math.isnan(accuracy):
            stop_diverged(f"the adaptation diverged on every validation task at iteration {self.done}", self.iteration)
        self.log(validation_accuracy=accuracy)
        if accuracy > self.best["accuracy"]:
            self.best = dict(accuracy=accuracy, iteration=self.done, params=[p.detach().cpu().clone() for p in params])

    def untimed(self):
        """A context in which time is not training time (tests of the curve)."""
        return self.stopwatch.untimed()

    def _end_row(self):
        """Write the open row and, when due, the checkpoint. True when the time budget stops the run."""
        if self.rank == 0:
            self.metrics.log(**self.row)  # before the checkpoint, so a resume never loses a row
        if self.out_of_time:  # training ends here: the checkpoint, the bar and the results say one time
            self.stopwatch.stop()
        if self.due.checkpoint:
            self.iteration, self.train_seconds = self.done, self._save_checkpoint(self.done)
        shown = {name: f"{self.row[name]:.3g}" for name in self.recorded}
        validated = self.best["params"] is not None
        self.progress.set_postfix(**shown, **({"best": f"{self.best['accuracy']:.3f}"} if validated else {}))
        return self.out_of_time

    def _save_checkpoint(self, iteration):
        """Called by every process: the checkpoint holds each one's metric window.
        Returns the training time it holds."""
        seconds = self.stopwatch.seconds()
        windows = distributed.every_process([[v.cpu() for v in window] for window in self.windows.values()],
                                            self.world_size)
        if self.rank > 0:
            return seconds
        state = {key: state_of(value) for key, value in self.tracked.items()}
        if self.keeps_best:
            state["best"] = self.best
        files.save_checkpoint(dict(experiment=self.experiment, config=vars(self.cfg), defaults=self.defaults,
                                   iteration=iteration, train_seconds=seconds, windows=windows, **state),
                              self.path("checkpoint.pt"))
        if self.keeps_best:
            files.save_checkpoint(self.best, self.path("best.pt"))  # a copy for users; the checkpoint holds it too
        return seconds

    # ---- after training ----
    def best_params(self):
        """The best validated parameters, on the run's device."""
        if self.best["params"] is None:  # stopped by a signal before its first validation
            fail(f"{self.dir} has no validated parameters yet: continue it with --resume first")
        return [p.to(self.device) for p in self.best["params"]]

    def metrics_rows(self):
        return files.read_metrics(self.path("metrics.csv"))
