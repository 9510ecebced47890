"""Tasks of a meta-batch spread over processes with torch.distributed.

    torchrun --nproc-per-node P script.py ...      # P processes on this machine
    python script.py ...                           # one process, no process group

Every process draws the same tasks from the same generator and works on its
share of them; the meta-gradients are summed with one all-reduce (gloo on the
CPU, NCCL on CUDA), each process having already divided by the whole
meta-batch, so the result is the mean over all tasks. Validation and test tasks
are shared out the same way and gathered. Process 0 alone writes files.
"""
import contextlib
import datetime
import os

import torch
import torch.distributed as dist

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


def sum_gradients(params, world_size):
    """Sum .grad over all processes (each holds its tasks' share of the mean)."""
    for p, total in zip(params, sum_across([p.grad for p in params], world_size)):
        p.grad = total


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


@contextlib.contextmanager
def rank_zero_first(rank, world_size):
    """Process 0 runs the block (e.g. building a cache) before the others do."""
    if rank > 0:
        _collective(dist.barrier)
    yield
    if rank == 0 and world_size > 1:
        _collective(dist.barrier)


def finish():
    """Leave the process group together: a process that left while another was
    still writing its results could abort at exit."""
    if dist.is_initialized():
        _collective(dist.barrier)
        dist.destroy_process_group()
