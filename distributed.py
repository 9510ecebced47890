"""Tasks of a meta-batch spread over processes with torch.distributed.

    python distributed.py --processes P script.py ...   # P processes on this machine
    torchrun --nnodes M --nproc-per-node P ... script.py ...   # on several machines
    python script.py ...                                # one process, no process group

Every process draws the same tasks from the same generator and works on its
share of them; the meta-gradients are summed with one all-reduce (gloo on the
CPU, NCCL on CUDA), each process having already divided by the whole
meta-batch, so the result is the mean over all tasks. Validation and test tasks
are shared out the same way and gathered. Process 0 alone writes files.
"""
import argparse
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import settings
import utils

# How long a collective waits for a process that stopped answering before it fails.
TIMEOUT = datetime.timedelta(minutes=5)


class ProcessFailure(Exception):
    """Another process of the run stopped answering or failed."""


def setup(device):
    """Join the process group that torchrun started, if any. Returns (rank,
    world_size, device); under torchrun with CUDA each process takes the GPU of
    its local rank."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), device


def share(n_items, rank, world_size):
    """This process's slice of n_items, shared out as evenly as possible (25 over 2: 13 + 12)."""
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def take_share(tensors, rank, world_size):
    """This process's share of tensors that have a leading task dimension."""
    part = share(tensors[0].shape[0], rank, world_size)
    return [t[part] for t in tensors]


def _collective(operation, *args):
    try:
        return operation(*args)
    except (RuntimeError, dist.DistBackendError) as error:
        raise ProcessFailure(f"another process of the run stopped answering or failed "
                             f"({str(error).splitlines()[0][:200]})") from None


def sum_across(tensors, world_size):
    """The tensors summed over all processes, in one all-reduce."""
    if world_size == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    _collective(dist.all_reduce, flat)
    return [total.view_as(t) for t, total in zip(tensors, flat.split([t.numel() for t in tensors]))]


def largest(value, world_size, device):
    """The largest of the processes' values of a number (the one value with 1 process)."""
    if world_size == 1:
        return value
    tensor = torch.tensor(float(value), device=device)
    _collective(dist.all_reduce, tensor, dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_rows(rows, world_size):
    """Every process's rows (a tensor with a leading item dimension) joined in
    rank order: with take_share, the rows of all items in their order."""
    if world_size == 1:
        return rows
    parts = [None] * world_size
    _collective(dist.all_gather_object, parts, rows.cpu())
    return torch.cat(parts).to(rows.device)


def from_rank_zero(obj, world_size):
    """Process 0's obj (e.g. the checkpoint it loaded) on every process."""
    if world_size == 1:
        return obj
    box = [obj]
    _collective(dist.broadcast_object_list, box, 0)
    return box[0]


def every_process(obj, world_size):
    """Every process's obj, in rank order ([obj] with one process)."""
    if world_size == 1:
        return [obj]
    parts = [None] * world_size
    _collective(dist.all_gather_object, parts, obj)
    return parts


def own_window(checkpoint, rank, world_size, metrics, replicated=()):
    """This process's metric window (a list of values per metric, `metrics` of
    them) from a checkpoint's windows of every process: empty without a
    checkpoint; its own, with as many processes as before; otherwise process 0
    takes the sums over the old processes and the others zeros, as a metrics row
    adds up the processes' means, except for the metrics every process holds alike
    (their indices in replicated), copied. A checkpoint written before windows of
    every process were kept holds process 0's alone ("window"); one of them it must
    hold (lifecycle refuses a checkpoint without)."""
    if checkpoint is None:
        return [[] for _ in range(metrics)]
    windows = checkpoint["windows"] if "windows" in checkpoint else [checkpoint["window"]]
    if len(windows) == world_size:
        return windows[rank]
    own = []
    for index, metric in enumerate(zip(*windows)):  # metric: its values in each old process
        if index in replicated:
            own.append(list(metric[0]))
        elif rank == 0:
            own.append([sum(values) for values in zip(*metric)])
        else:
            own.append([0 * value for value in metric[0]])
    return own


@contextlib.contextmanager
def rank_zero_first(rank, world_size):
    """Process 0 runs the block (e.g. building a cache) before the others do."""
    if rank > 0:
        _collective(dist.barrier)
    yield
    if rank == 0 and world_size > 1:
        _collective(dist.barrier)


def finish():
    """Leave the process group together (a process that left while another was
    still writing its results could abort at exit), then end this process at once:
    past the interpreter's teardown, where a thread of the group left behind can
    abort it ("terminate called without an active exception", exit code -6)."""
    if dist.is_initialized():
        _collective(dist.barrier)
        dist.destroy_process_group()
        utils.run_exit_tasks()  # os._exit skips them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# ---- the launcher: P processes on this machine ----------------------------------
LAUNCHER_ENV = "MAML_LAUNCHER"  # how the processes were started, for the command that continues a run
FAILURE_GRACE_SECONDS = 10  # the others' time to end by themselves after one process failed


def failed_first(codes):
    """(rank, exit code) of the process to blame among those seen failed in one look, None if
    none: one that a signal ended (the others often fail because of it), else the first in
    rank order."""
    failed = [(code >= 0, rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
    return min(failed)[1:] if failed else None


def launch(processes, script_and_args):
    """Start `processes` copies of a script on this machine as one process group,
    with the environment torchrun gives its workers (one thread each unless
    OMP_NUM_THREADS says otherwise). Ctrl-C and SIGTERM are passed on to every
    process once (they run in a session of their own, so that a terminal's Ctrl-C
    reaches them only through here). Returns the exit code: the signal's (130,
    143) when every process stopped on it, else that of the first process to
    fail in time (of those seen failed at once, one a signal ended: 128 + the
    signal), named in a line (the others are ended FAILURE_GRACE_SECONDS later),
    else 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"OMP_NUM_THREADS": "1", **os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
           LAUNCHER_ENV: f"python distributed.py --processes {processes}"}
    workers = [subprocess.Popen([sys.executable, *script_and_args], start_new_session=True,
                                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
               for rank in range(processes)]
    received = []

    def pass_on(signum, frame):
        received.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, pass_on)
    first_failure = None  # (rank, exit code) of the first process seen to fail
    while None in (codes := [worker.poll() for worker in workers]):  # every process looked at, each time
        if first_failure is None and not received:
            first_failure = failed_first(codes)
            failed_at = time.monotonic()
        if first_failure is not None and time.monotonic() - failed_at > FAILURE_GRACE_SECONDS:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
        time.sleep(0.1)
    if received and all(code == 128 + received[0] for code in codes):
        return 128 + received[0]
    if first_failure is None:  # they ended within one look, or after a signal
        first_failure = failed_first(codes) or (0, 0)
    rank, code = first_failure
    if code not in (0, 2):  # 2: bad input, which process 0 has said in one line
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        print(f"error: process {rank} of {processes} failed first ({how})", file=sys.stderr, flush=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    parser = settings.OneLineParser(description="Run a script as P processes on this machine "
                                                 "(python distributed.py --processes 2 omniglot_maml.py ...).")
    parser.add_argument("--processes", type=int, required=True, help="how many processes")
    parser.add_argument("script", help="the script, then its own arguments")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    if arguments.processes < 1:
        parser.error(f"--processes must be at least 1, got {arguments.processes}")
    if not os.path.isfile(arguments.script):
        parser.error(f"no script {arguments.script} to start")
    sys.exit(launch(arguments.processes, [arguments.script, *arguments.args]))
