"""Signals: Ctrl-C or SIGTERM stops a run after its current iteration with a
checkpoint, saying how to continue; a second one, or one once training is over,
stops it at once."""
import os
import shlex
import signal
import sys

import tqdm

import distributed

_stop_signal = []  # the signal that asked the run to stop, once one has
_stop_at_once = []  # once training is over: the line a signal prints as it stops the run at once


_exiting = []  # once the process is on its way out: a signal then ends it at once, quietly


def stop_on_signals():
    """From now on SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after
    its current iteration (stop_requested); a second one stops at once, and so
    does the first after stop_at_once_from_now. Once a stop is under way, or the
    script's work is done, a signal ends the process at once without raising
    (an exception raised in the interpreter's teardown would print a traceback)."""
    def request_stop(signum, frame):
        if _exiting:
            sys.stderr.flush()
            os._exit(128 + signum)
        if _stop_signal or _stop_at_once:
            _say_stopped(_stop_at_once[0] if _stop_at_once else "")
            exit_now(128 + signum)
        _stop_signal.append(signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def exit_now(code):
    """sys.exit(code), after which a signal no longer raises (stop_on_signals)."""
    _exiting.append(code)
    sys.exit(code)


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
    exit_now(code)


def stop_at_once_from_now(script, argv, rank, world_size):
    """Once training is over and checkpointed (the final test follows), a signal
    stops the run at once, saying how to test it again."""
    evaluating_only = "--eval-only" in (sys.argv[1:] if argv is None else argv)
    line = (f"stopped during the final test; the run's training is complete and checkpointed; test it again "
            f"with: {continue_command(script, argv, world_size, resume=not evaluating_only)}") if rank == 0 else ""
    if _stop_signal:  # a signal came after the last iteration began
        _say_stopped(line)
        exit_now(128 + _stop_signal[0])
    _stop_at_once[:] = [line]


def run_main(main, argv):
    """Run a script's main(argv) as a command: signals stop it cleanly
    (stop_on_signals), and a failed process group ends in one line, exit 1."""
    stop_on_signals()
    try:
        main(argv)
        _exiting.append(0)
        distributed.finish()
    except distributed.ProcessFailure as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # not through the broken process group's destructors, which can abort
    except SystemExit:
        _exiting.append(1)
        raise
