"""The meta-learning core shared by both experiments.

Everything is written for ONE task as a pure function of a parameter list, then
batched over the tasks of a meta-batch with torch.func.vmap:

  adapt          inner loop: SGD (MAML) or Adam with beta1 = 0 (Reptile) on a
                 task's support set; returns the parameters after every step.
  maml_meta_loss mean query loss after adaptation over a meta-batch (one vmapped
                 call); backpropagating through it gives the MAML meta-gradient,
                 second order, or first order (FOMAML) when the inner gradients
                 are detached.
  reptile_meta_step  theta <- theta + eps * mean_over_tasks(phi_task - theta).
  evaluate_adaptation  query metric after 0..S adaptation steps, per task.
  maml_meta_gradient  the MAML meta-gradient accumulated into .grad, a group of
                 tasks at a time, batched or task by task.
  ALGORITHMS     what the scripts call: maml, fomaml, anil and reptile as
                 meta-updates with one signature, chosen by name.

maml_meta_loss_loop is the same MAML computation as a plain Python loop over
tasks with torch.autograd.grad: the reference the tests hold the vmapped
version to, and the baseline of benchmark.py.

`forward(params, x)` is a network from models.py, `loss_fn(prediction, y)` a
scalar loss (mean over the batch), tensors of a meta-batch carry a leading task
dimension.
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch.func import grad, vmap

import utils

ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
HEAD = 2  # the final linear layer (weight, bias): the last two parameters of every network in models.py


def _minibatch(x, y, step, batch_size):
    """The step-th mini-batch of a task's data, cycling through it in order."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        return x, y
    index = (torch.arange(batch_size, device=x.device) + step * batch_size) % n
    return x[index], y[index]


def adapt(forward, loss_fn, params, x, y, steps, lr, first_order=False,
          optimizer="sgd", batch_size=None, adapted=None):
    """Adapt `params` to one task's data (x, y); return the list of parameter
    lists after 0, 1, ..., steps steps.

    optimizer "sgd": p <- p - lr * g (MAML). optimizer "adam": Adam with
    beta1 = 0 from a fresh state (Reptile's inner loop). With batch_size, each
    step sees the next mini-batch of the task's data. The inner gradients are
    part of the autograd graph (second-order MAML) unless first_order is set.
    adapted: which parameters adapt (a tuple of bools, inner_loop_mask); the others
    stay as they are within the task. None: all of them.
    """
    if adapted is not None and not all(adapted):
        def whole(free):  # the free parameters back among the fixed ones
            free = iter(free)
            return [next(free) if a else p for p, a in zip(params, adapted)]
        trajectory = adapt(lambda free, xb: forward(whole(free), xb), loss_fn,
                           [p for p, a in zip(params, adapted) if a], x, y, steps, lr, first_order, optimizer,
                           batch_size)
        return [whole(free) for free in trajectory]

    def task_loss(p, xb, yb):
        return loss_fn(forward(p, xb), yb)

    task_grad = grad(task_loss)
    trajectory = [params]
    second_moment = [torch.zeros_like(p) for p in params] if optimizer == "adam" else None
    for step in range(steps):
        xb, yb = _minibatch(x, y, step, batch_size)
        grads = task_grad(params, xb, yb)
        if first_order:
            grads = [g.detach() for g in grads]
        if optimizer == "sgd":
            params = [p - lr * g for p, g in zip(params, grads)]
        else:
            second_moment = [ADAM_BETA2 * v + (1 - ADAM_BETA2) * g * g
                             for v, g in zip(second_moment, grads)]
            bias_correction = 1 - ADAM_BETA2 ** (step + 1)
            params = [p - lr * g / ((v / bias_correction).sqrt() + ADAM_EPS)
                      for p, g, v in zip(params, grads, second_moment)]
        trajectory.append(params)
    return trajectory


def maml_meta_loss(forward, loss_fn, params, support, query, steps, lr, first_order=False, adapted=None):
    """MAML over a meta-batch in one vmapped call.

    support, query: (x, y) with a leading task dimension. Returns the mean query
    loss after `steps` SGD steps (differentiable w.r.t. params: .backward() gives
    the meta-gradient) and the query predictions, shape (tasks, n_query, ...).
    adapted: the parameters the inner loop adapts (inner_loop_mask; None: all).
    """
    def one_task(p, support_x, support_y, query_x, query_y):
        task_params = adapt(forward, loss_fn, p, support_x, support_y, steps, lr, first_order, adapted=adapted)[-1]
        prediction = forward(task_params, query_x)
        return loss_fn(prediction, query_y), prediction

    losses, predictions = vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, *support, *query)
    return losses.mean(), predictions


def maml_meta_loss_loop(forward, loss_fn, params, support, query, steps, lr, first_order=False, adapted=None):
    """Reference for maml_meta_loss: a Python loop over tasks, torch.autograd.grad
    for the inner gradients. Same arguments and results."""
    losses, predictions = [], []
    free = [i for i in range(len(params)) if adapted is None or adapted[i]]
    for support_x, support_y, query_x, query_y in zip(*support, *query):
        task_params = list(params)
        for _ in range(steps):
            loss = loss_fn(forward(task_params, support_x), support_y)
            grads = torch.autograd.grad(loss, [task_params[i] for i in free], create_graph=not first_order)
            for i, g in zip(free, grads):
                task_params[i] = task_params[i] - lr * g
        prediction = forward(task_params, query_x)
        losses.append(loss_fn(prediction, query_y))
        predictions.append(prediction)
    return torch.stack(losses).mean(), torch.stack(predictions)


def maml_meta_gradient(forward, loss_fn, params, support, query, steps, lr, first_order=False,
                       tasks_per_call=None, batched=True, meta_batch_size=None, adapted=None):
    """The MAML meta-gradient, added into each parameter's .grad: the gradient of
    the mean query loss over the meta-batch, computed tasks_per_call tasks at a
    time (all at once by default), each group backpropagated as soon as it is done.

    batched: each group in one vmapped call (maml_meta_loss), else task by task
    (maml_meta_loss_loop). Small groups keep a group's activations in the CPU's
    cache from the forward pass to the backward pass and bound memory; one large
    group keeps a GPU busy. Every choice gives the same gradient up to the order
    of floating-point sums. meta_batch_size: the tasks of the whole meta-batch
    when these are only this process's share (distributed.py), so that the
    shares' gradients add up to the mean. adapted: the parameters the inner loop
    adapts (inner_loop_mask). Returns
    this share of the mean query loss (detached) and the query predictions
    (tasks, n_query, ...).
    """
    meta_loss = maml_meta_loss if batched else maml_meta_loss_loop
    n_here = support[0].shape[0]
    n_tasks = meta_batch_size or n_here
    group = tasks_per_call or n_here
    losses, predictions = [], []
    for first in range(0, n_here, group):
        part = slice(first, first + group)
        loss, prediction = meta_loss(forward, loss_fn, params, [t[part] for t in support],
                                     [t[part] for t in query], steps, lr, first_order, adapted)
        share = prediction.shape[0] / n_tasks
        (loss * share).backward()
        losses.append(loss.detach() * share)
        predictions.append(prediction.detach())
    return torch.stack(losses).sum(), torch.cat(predictions)


# On a CPU, tasks go through the meta-gradient in vmapped groups of about this
# many images (support + query): large enough that batching pays, small enough
# that a group's activations stay in cache between its forward and backward
# passes. Tasks so large that fewer than MIN_TASKS_PER_CALL fit go one by one,
# which measured faster for them (benchmark.py; README, Speed).
CPU_IMAGES_PER_CALL = 160
MIN_TASKS_PER_CALL = 4


def task_grouping(device, n_tasks, images_per_task):
    """maml_meta_gradient's tasks_per_call and batched for a meta-batch on a device:
    the whole meta-batch in one vmapped call on a GPU; on a CPU, vmapped groups of
    about CPU_IMAGES_PER_CALL images, or task by task for large tasks."""
    if device.type != "cpu":
        return dict(tasks_per_call=None, batched=True)
    group = CPU_IMAGES_PER_CALL // images_per_task
    if group < MIN_TASKS_PER_CALL:
        return dict(tasks_per_call=1, batched=False)
    return dict(tasks_per_call=min(group, n_tasks), batched=True)


def reptile_meta_step(forward, loss_fn, params, tasks, steps, lr, meta_step_size,
                      optimizer="adam", batch_size=None, meta_batch_size=None, sum_over_processes=None):
    """One Reptile meta-update, in place on `params`:
    theta <- theta + meta_step_size * mean_over_tasks(phi_task - theta),
    where phi_task is theta after `steps` inner steps on that task's data.
    tasks: (x, y) with a leading task dimension. No second derivatives anywhere.
    When the tasks are one process's share, meta_batch_size is the whole
    meta-batch's and sum_over_processes(list of tensors) adds up the shares.
    Returns, like maml_meta_gradient, this share of the mean loss of the adapted
    parameters on their tasks' data and their predictions, shape (tasks, n, ...).
    """
    n_tasks = meta_batch_size or tasks[0].shape[0]
    detached = [p.detach() for p in params]

    def one_task(x, y):
        return adapt(forward, loss_fn, detached, x, y, steps, lr, first_order=True,
                     optimizer=optimizer, batch_size=batch_size)[-1]

    adapted = vmap(one_task)(*tasks)
    with torch.no_grad():
        displacement = [(phi - p).sum(dim=0) / n_tasks for p, phi in zip(params, adapted)]
        if sum_over_processes:
            displacement = sum_over_processes(displacement)
        for p, d in zip(params, displacement):
            p.add_(meta_step_size * d)
        predictions = vmap(forward)(adapted, tasks[0])
        return vmap(loss_fn)(predictions, tasks[1]).sum() / n_tasks, predictions


def evaluate_adaptation(forward, loss_fn, metric_fn, params, support, query, steps, lr,
                        optimizer="sgd", batch_size=None, adapted=None, chunk_size=None, progress=None):
    """Adapt to each task's support set and measure metric_fn(prediction, y) on
    its query set after 0, 1, ..., steps steps. Returns a (tasks, steps + 1) tensor.
    chunk_size bounds how many tasks are in memory at once; with progress (a
    description), a progress bar advances chunk by chunk."""
    detached = [p.detach() for p in params]

    def one_task(support_x, support_y, query_x, query_y):
        trajectory = adapt(forward, loss_fn, detached, support_x, support_y, steps, lr, first_order=True,
                           optimizer=optimizer, batch_size=batch_size, adapted=adapted)
        return torch.stack([metric_fn(forward(p, query_x), query_y) for p in trajectory])

    n_tasks = support[0].shape[0]
    chunk = chunk_size or n_tasks
    with torch.no_grad():
        return torch.cat([vmap(one_task)(*[t[first:first + chunk] for t in (*support, *query)])
                          for first in utils.progress(range(0, n_tasks, chunk), desc=progress, transient=True,
                                                      disable=progress is None)])


def inner_loop_mask(n_params, network_mask=None, head_only=False):
    """Which of n_params parameters an inner loop adapts, a tuple of bools (None: all):
    only the final layer (ANIL), else those the network says (models.ConvNet.inner_loop_mask)."""
    if head_only:
        return (False,) * (n_params - HEAD) + (True,) * HEAD
    return network_mask


# ---- Algorithms: one meta-update each, one signature, chosen by name -----------------
@dataclass
class Learner:
    """What a meta-update needs besides the parameters, the optimizer and the tasks."""
    forward: Callable  # forward(params, x), a network of models.py
    loss_fn: Callable  # loss_fn(prediction, y), a scalar
    inner_steps: int  # adaptation steps per task in meta-training
    inner_lr: float  # their step size
    meta_batch_size: int  # tasks of the whole meta-batch (a process may hold a share of them)
    meta_iterations: int  # of the run (Reptile anneals its meta step over them)
    sum_across: Callable = list  # sums a list of tensors over processes (distributed.sum_across)
    tasks_per_call: Optional[int] = None  # MAML's groups of tasks (task_grouping)
    batched: bool = True
    inner_optimizer: str = "sgd"  # reptile: "adam" (beta1 = 0) or "sgd"
    inner_batch: Optional[int] = None  # reptile: examples per inner step (None: all of the task's)
    meta_step: float = 1.0  # reptile: the outer step size at the start, annealed linearly to 0
    adapted: Optional[tuple] = None  # the parameters the inner loop adapts (inner_loop_mask; None: all)

    def sum_gradients(self, params):
        """Each .grad summed over processes (each holds its tasks' share of the mean)."""
        for p, total in zip(params, self.sum_across([p.grad for p in params])):
            p.grad = total


# A meta-update: meta_update(learner, params, optimizer, support, query, iteration) updates
# params (through optimizer or in place) from a meta-batch of tasks, support and query as
# (x, y) with a leading task dimension, this process's share of them. It returns this share
# of the mean loss, and predictions with their targets, for a training accuracy.
def maml(learner, params, optimizer, support, query, iteration, first_order=False, adapted=None):
    """MAML (Finn et al. 2017): one Adam step on the meta-gradient of the query loss after adaptation.
    adapted: the parameters the inner loop adapts, if not the learner's."""
    optimizer.zero_grad()
    loss, predictions = maml_meta_gradient(
        learner.forward, learner.loss_fn, params, support, query, learner.inner_steps, learner.inner_lr,
        first_order=first_order, tasks_per_call=learner.tasks_per_call, batched=learner.batched,
        meta_batch_size=learner.meta_batch_size, adapted=learner.adapted if adapted is None else adapted)
    learner.sum_gradients(params)
    optimizer.step()
    return loss, predictions, query[1]


def fomaml(learner, params, optimizer, support, query, iteration):
    """First-order MAML: the inner gradients are constants (no second derivatives)."""
    return maml(learner, params, optimizer, support, query, iteration, first_order=True)


def anil(learner, params, optimizer, support, query, iteration):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the final layer;
    the meta-gradient, second order, still reaches every layer."""
    return maml(learner, params, optimizer, support, query, iteration,
                adapted=inner_loop_mask(len(params), head_only=True))


def reptile(learner, params, optimizer, support, query, iteration):
    """Reptile (Nichol et al. 2018): theta += eps * mean(phi_task - theta), eps annealed
    linearly to 0 over the run. A task's support and query points are all trained on."""
    tasks = [torch.cat(parts, dim=1) for parts in zip(support, query)]
    meta_step_size = learner.meta_step * (1 - iteration / learner.meta_iterations)
    loss, predictions = reptile_meta_step(
        learner.forward, learner.loss_fn, params, tasks, learner.inner_steps, learner.inner_lr, meta_step_size,
        optimizer=learner.inner_optimizer, batch_size=learner.inner_batch, meta_batch_size=learner.meta_batch_size,
        sum_over_processes=learner.sum_across)
    return loss, predictions, tasks[1]


class Algorithm(NamedTuple):
    meta_update: Callable
    head_only: bool = False  # adapts only the final layer, in meta-training and at test
    anneals: bool = False  # its steps follow a schedule over meta_iterations, which a resume may not change


ALGORITHMS = {
    "maml": Algorithm(maml),
    "fomaml": Algorithm(fomaml),
    "anil": Algorithm(anil, head_only=True),
    "reptile": Algorithm(reptile, anneals=True),
}


def free_on_resume(config):
    """The settings that a resumed run (config: its settings, a dict) may change:
    its budget of iterations, unless its algorithm follows a schedule over them."""
    return set() if ALGORITHMS[config["algorithm"]].anneals else {"meta_iterations"}
