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
  ALGORITHMS     what the scripts call, chosen by name: each algorithm says how it
                 meta-trains (meta_update) and how it predicts on a new task from its
                 support set (predict): after 0..S gradient steps (maml, fomaml, anil,
                 reptile, metasgd) or in one pass (protonet, cnp).
  evaluate       an algorithm's query metric on new tasks, per task and step.

maml_meta_loss_loop is the same MAML computation as a plain Python loop over
tasks with torch.autograd.grad: the reference the tests hold the vmapped
version to, and the baseline of benchmark.py.

`forward(params, x)` is a network from models.py, `loss_fn(prediction, y)` a
scalar loss (mean over the batch), tensors of a meta-batch carry a leading task
dimension.
"""
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import models
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
    stay as they are within the task. None: all of them. lr: a number, or for SGD a
    list of tensors of the parameters' shapes, one step size per entry (Meta-SGD).
    """
    if adapted is not None and not all(adapted):
        def whole(free):  # the free parameters back among the fixed ones
            free = iter(free)
            return [next(free) if a else p for p, a in zip(params, adapted)]
        free_lr = [r for r, a in zip(lr, adapted) if a] if isinstance(lr, list) else lr
        trajectory = adapt(lambda free, xb: forward(whole(free), xb), loss_fn,
                           [p for p, a in zip(params, adapted) if a], x, y, steps, free_lr, first_order, optimizer,
                           batch_size)
        return [whole(free) for free in trajectory]
    step_sizes = lr if isinstance(lr, list) else [lr] * len(params)

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
            params = [p - r * g for p, r, g in zip(params, step_sizes, grads)]
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
    step_sizes = lr if isinstance(lr, list) else [lr] * len(params)
    for support_x, support_y, query_x, query_y in zip(*support, *query):
        task_params = list(params)
        for _ in range(steps):
            loss = loss_fn(forward(task_params, support_x), support_y)
            grads = torch.autograd.grad(loss, [task_params[i] for i in free], create_graph=not first_order)
            for i, g in zip(free, grads):
                task_params[i] = task_params[i] - step_sizes[i] * g
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


def adapted_predictions(forward, loss_fn, params, support_x, support_y, query_x, steps, lr, optimizer="sgd",
                        batch_size=None, adapted=None):
    """One task's predictions on query_x after 0, 1, ..., steps adaptation steps on its
    support set (adapt's arguments; first order: nothing is meta-learned here)."""
    trajectory = adapt(forward, loss_fn, params, support_x, support_y, steps, lr, first_order=True,
                       optimizer=optimizer, batch_size=batch_size, adapted=adapted)
    return [forward(p, query_x) for p in trajectory]


def evaluate_predictions(predict, metric_fn, support, query, chunk_size=None, progress=None):
    """metric_fn(prediction, y) on each task's query set of each prediction that
    predict(support_x, support_y, query_x) makes for it: a (tasks, predictions) tensor.
    chunk_size bounds how many tasks are in memory at once; with progress (a
    description), a progress bar advances chunk by chunk."""
    def one_task(support_x, support_y, query_x, query_y):
        return torch.stack([metric_fn(p, query_y) for p in predict(support_x, support_y, query_x)])

    n_tasks = support[0].shape[0]
    chunk = chunk_size or n_tasks
    with torch.no_grad():
        return torch.cat([vmap(one_task)(*[t[first:first + chunk] for t in (*support, *query)])
                          for first in utils.progress(range(0, n_tasks, chunk), desc=progress, transient=True,
                                                      disable=progress is None)])


def evaluate_adaptation(forward, loss_fn, metric_fn, params, support, query, steps, lr, optimizer="sgd",
                        batch_size=None, adapted=None, chunk_size=None, progress=None):
    """Adapt to each task's support set (as adapt does) and measure metric_fn(prediction, y)
    on its query set after 0, 1, ..., steps steps: a (tasks, steps + 1) tensor."""
    detached = [p.detach() for p in params]
    return evaluate_predictions(
        lambda *task: adapted_predictions(forward, loss_fn, detached, *task, steps, lr, optimizer, batch_size, adapted),
        metric_fn, support, query, chunk_size, progress)


def evaluate(algorithm, learner, metric_fn, params, support, query, steps, chunk_size=None, progress=None,
             **adaptation):
    """The algorithm's metric_fn(prediction, y) on new tasks' query sets, from their
    support sets: a (tasks, steps + 1) tensor for an algorithm that adapts with gradient
    steps (adaptation: how, as adapt takes it), a (tasks, 1) tensor for one that predicts
    in one pass."""
    detached = [p.detach() for p in params]
    return evaluate_predictions(
        lambda *task: algorithm.predict(learner, detached, *task, steps, **adaptation),
        metric_fn, support, query, chunk_size, progress)


def inner_loop_mask(n_params, network_mask=None, head_only=False):
    """Which of n_params parameters an inner loop adapts, a tuple of bools (None: all):
    only the final layer (ANIL), else those the network says (models.ConvNet.inner_loop_mask)."""
    if head_only:
        return (False,) * (n_params - HEAD) + (True,) * HEAD
    return network_mask


# ---- Algorithms: how each meta-trains and predicts, one signature, chosen by name -------
@dataclass
class Learner:
    """What an algorithm needs besides the parameters, the optimizer and the tasks."""
    forward: Callable  # forward(params, x), a network of models.py
    loss_fn: Callable  # loss_fn(prediction, y), a scalar
    meta_batch_size: int  # tasks of the whole meta-batch (a process may hold a share of them)
    meta_iterations: int  # of the run (Reptile anneals its meta step over them)
    inner_steps: Optional[int] = None  # adaptation steps per task in meta-training (those that adapt)
    inner_lr: Optional[float] = None  # their step size
    sum_across: Callable = list  # sums a list of tensors over processes (distributed.sum_across)
    tasks_per_call: Optional[int] = None  # MAML's groups of tasks (task_grouping)
    batched: bool = True
    inner_optimizer: str = "sgd"  # reptile: "adam" (beta1 = 0) or "sgd"
    inner_batch: Optional[int] = None  # reptile: examples per inner step (None: all of the task's)
    meta_step: float = 1.0  # reptile: the outer step size at the start, annealed linearly to 0
    adapted: Optional[tuple] = None  # the parameters the inner loop adapts (inner_loop_mask; None: all)
    features: Optional[Callable] = None  # features(body, x): the network without its output layer (protonet, cnp)
    n_classes: Optional[int] = None  # classes of a test task (None: regression)
    train_classes: Optional[int] = None  # classes of a meta-training task, if not n_classes (protonet)
    meta_lr: float = 1e-3  # the optimizer's step size at the start
    meta_lr_halving: int = 0  # iterations between halvings of it (0: never)

    def sum_gradients(self, params):
        """Each .grad summed over processes (each holds its tasks' share of the mean)."""
        with_gradient = [p for p in params if p.grad is not None]  # unused ones have none in every process
        for p, total in zip(with_gradient, self.sum_across([p.grad for p in with_gradient])):
            p.grad = total

    def step(self, params, optimizer, iteration):
        """The optimizer's step on the gradients summed over processes, at this iteration's step size."""
        self.sum_gradients(params)
        if self.meta_lr_halving:
            for group in optimizer.param_groups:
                group["lr"] = self.meta_lr * 0.5 ** (iteration // self.meta_lr_halving)
        optimizer.step()


# A meta-update: meta_update(learner, params, optimizer, support, query, iteration) updates
# params (through optimizer or in place) from a meta-batch of tasks, support and query as
# (x, y) with a leading task dimension, this process's share of them. It returns this share
# of the mean loss, and predictions with their targets, for a training accuracy.
# A prediction: predict(learner, params, support_x, support_y, query_x, steps, **adaptation)
# returns one task's query predictions after 0..steps gradient steps on its support set, or
# the one prediction of an algorithm that predicts in one pass, as a list.
def maml(learner, params, optimizer, support, query, iteration, first_order=False, adapted=None, lr=None):
    """MAML (Finn et al. 2017): one Adam step on the meta-gradient of the query loss after adaptation.
    adapted: the parameters the inner loop adapts, if not the learner's; lr: its step
    size, if not the learner's (a number, or a tensor per parameter); params also holds
    those tensors when they are meta-learned."""
    optimizer.zero_grad()
    network = params[:len(lr)] if isinstance(lr, list) else params
    loss, predictions = maml_meta_gradient(
        learner.forward, learner.loss_fn, network, support, query, learner.inner_steps,
        learner.inner_lr if lr is None else lr,
        first_order=first_order, tasks_per_call=learner.tasks_per_call, batched=learner.batched,
        meta_batch_size=learner.meta_batch_size, adapted=learner.adapted if adapted is None else adapted)
    learner.step(params, optimizer, iteration)
    return loss, predictions, query[1]


def gradient_steps(learner, params, support_x, support_y, query_x, steps, **adaptation):
    """The prediction of MAML and its kin: after 0..steps steps on the support set."""
    return adapted_predictions(learner.forward, learner.loss_fn, params, support_x, support_y, query_x, steps,
                               **adaptation)


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


# Meta-SGD (Li et al. 2017): params is the network's parameters, then as many tensors of
# the same shapes, one inner step size per entry, meta-learned with them by MAML's
# second-order meta-gradient. They start at the learner's inner_lr: Meta-SGD starts as MAML.
def metasgd_parameters(learner, network, generator):
    return network + [torch.full_like(p, learner.inner_lr).requires_grad_() for p in network]


def metasgd(learner, params, optimizer, support, query, iteration):
    """Meta-SGD: MAML whose inner step sizes are meta-learned, one per parameter entry."""
    return maml(learner, params, optimizer, support, query, iteration, lr=params[len(params) // 2:])


def metasgd_steps(learner, params, support_x, support_y, query_x, steps, lr=None, **adaptation):
    """Meta-SGD's prediction: gradient steps with its learned step sizes (not lr)."""
    half = len(params) // 2
    return gradient_steps(learner, params[:half], support_x, support_y, query_x, steps, lr=params[half:],
                          **adaptation)


def one_pass_update(task_output, task_loss):
    """The meta-update of an algorithm that predicts a task's query set in one pass:
    an optimizer step on the mean query loss over the meta-batch, its tasks vmapped."""
    def meta_update(learner, params, optimizer, support, query, iteration):
        def one_task(p, support_x, support_y, query_x, query_y):
            output = task_output(learner, p, support_x, support_y, query_x, learner.train_classes or learner.n_classes)
            return task_loss(learner, output, query_y), output

        loss, outputs = one_pass_step(learner, params, optimizer, one_task, params, support, query, iteration)
        return loss, outputs.detach(), query[1]
    return meta_update


def one_pass_step(learner, params, optimizer, one_task, task_params, support, query, iteration):
    """An optimizer step on the mean over the meta-batch of one_task(task_params, *task)'s
    first output, a loss, its tasks vmapped; returns that mean (detached) and the other outputs."""
    optimizer.zero_grad()
    losses, *outputs = vmap(one_task, in_dims=(None, 0, 0, 0, 0))(task_params, *support, *query)
    loss = losses.sum() / learner.meta_batch_size
    loss.backward()
    learner.step(params, optimizer, iteration)
    return loss.detach(), *outputs


def task_features(learner, body, support_x, query_x, **batch_norm):
    """The support and query examples' features, from one pass of the network's body
    over both (its batch norm sees the task's images together, as MAML's sees a set;
    batch_norm: the features function's statistics or collected, models.normalized_layer)."""
    features = learner.features(body, torch.cat([support_x, query_x]), **batch_norm)
    return features[:len(support_x)], features[len(support_x):]


def class_members(labels, n_classes, dtype):
    """(n_classes, examples): 1 where the example is of the class, else 0."""
    return (labels == torch.arange(n_classes, device=labels.device)[:, None]).to(dtype)


# Prototypical Networks (Snell et al. 2017): the network without its output layer embeds
# the images; a class's prototype is the mean embedding of its support images, and a
# query's logits are minus its squared Euclidean distances to the prototypes.
def prototype_logits(support_features, support_y, query_features, n_classes):
    members = class_members(support_y, n_classes, support_features.dtype)
    prototypes = members @ support_features / members.sum(dim=1, keepdim=True)
    return -(query_features[:, None, :] - prototypes[None]).pow(2).sum(dim=-1)


def protonet_parameters(learner, network, generator):
    return network[:-HEAD]


def protonet_logits(learner, body, support_x, support_y, query_x, n_classes, **batch_norm):
    support_features, query_features = task_features(learner, body, support_x, query_x, **batch_norm)
    return prototype_logits(support_features, support_y, query_features, n_classes)


# Prototypical Networks as their paper's code tests them, with batch norm not transductive:
# in meta-training each layer normalises with its batch's statistics and keeps a running
# average of them (torch's batch norm: momentum 0.1, unbiased variance); validation and
# test normalise with that average, so a test task's images do not inform each other's
# normalisation. The averages ride at the end of the meta-parameters, without gradients
# (the optimizer leaves them alone), so checkpoints, best.pt and resumes keep them.
BATCH_NORM_MOMENTUM = 0.1


def running_statistics(params):
    """(the network's parameters, [(running mean, running variance) of each batch-norm layer])."""
    n_layers = len(models.batch_norm_channels(params))  # the statistics are 1-D: not counted
    body, statistics = params[:-2 * n_layers], params[-2 * n_layers:]
    return body, list(zip(statistics[::2], statistics[1::2]))


def protonet_running_parameters(learner, network, generator):
    body = protonet_parameters(learner, network, generator)
    like = dict(dtype=body[0].dtype, device=body[0].device)
    return body + [s for channels in models.batch_norm_channels(body)
                   for s in (torch.zeros(channels, **like), torch.ones(channels, **like))]


def protonet_running_update(learner, params, optimizer, support, query, iteration):
    """Prototypical Networks' meta-update, then the running statistics moved towards the
    mean over the meta-batch of its tasks' batch statistics."""
    body, running = running_statistics(params)

    def one_task(p, support_x, support_y, query_x, query_y):
        collected = []
        logits = protonet_logits(learner, p, support_x, support_y, query_x, learner.train_classes or learner.n_classes,
                                 collected=collected)
        return learner.loss_fn(logits, query_y), logits, collected

    loss, logits, collected = one_pass_step(learner, params, optimizer, one_task, body, support, query, iteration)
    with torch.no_grad():
        batch = learner.sum_across([s.sum(0) / learner.meta_batch_size for layer in collected for s in layer])
        for average, value in zip([s for layer in running for s in layer], batch):
            average.lerp_(value, BATCH_NORM_MOMENTUM)
    return loss, logits.detach(), query[1]


def protonet_running_logits(learner, params, support_x, support_y, query_x, n_classes):
    body, running = running_statistics(params)
    return protonet_logits(learner, body, support_x, support_y, query_x, n_classes, statistics=running)


def classification_loss(learner, logits, y):
    return learner.loss_fn(logits, y)


def predicted_once(task_output, point=lambda learner, output: output):
    """The predict of an algorithm that predicts in one pass: [its point prediction]."""
    def predict(learner, params, support_x, support_y, query_x, steps, **adaptation):
        return [point(learner, task_output(learner, params, support_x, support_y, query_x, learner.n_classes))]
    return predict


# A Conditional Neural Process (Garnelo et al. 2018; models.cnp) on the features of the
# network without its output layer. Classification: the support examples are grouped by
# class, and the decoder scores each class from a query's features and the class's mean
# encoding: the logits. Regression: one group of the whole support set, y enters the
# encoder, and the decoder outputs a Gaussian's mean and standard deviation, trained by
# their negative log-likelihood.
CNP_PARAMS = 4 * models.CNP_LAYERS  # its encoder's and decoder's weights and biases
CNP_MIN_STD = 0.1  # the floor of its predicted standard deviation (as the CNP paper's code)


def cnp_parameters(learner, network, generator):
    y_size, n_outputs = (0, 1) if learner.n_classes else (1, 2)
    return network[:-HEAD] + [p.to(network[0].device).requires_grad_() for p in models.init_cnp(
        network[-HEAD].shape[1], y_size, n_outputs, generator=generator, dtype=network[0].dtype)]


def cnp_output(learner, params, support_x, support_y, query_x, n_classes):
    """Logits (query, classes), or the Gaussian's mean and raw std (query, 2)."""
    body, head = params[:-CNP_PARAMS], params[-CNP_PARAMS:]
    support_features, query_features = task_features(learner, body, support_x, query_x)
    if n_classes:  # no y to encode: the class is the group an example's encoding is averaged in
        groups = class_members(support_y, n_classes, support_features.dtype)
        return models.cnp(head, support_features, support_features[:, :0], query_features, groups)[..., 0]
    return models.cnp(head, support_features, support_y, query_features)[:, 0]


def cnp_loss(learner, output, y):
    if learner.n_classes:
        return learner.loss_fn(output, y)
    mean, std = output[..., :1], CNP_MIN_STD + (1 - CNP_MIN_STD) * F.softplus(output[..., 1:])
    return (std.log() + 0.5 * ((y - mean) / std).pow(2)).mean() + 0.5 * math.log(2 * math.pi)


def cnp_point(learner, output):
    """Logits, or the predicted mean."""
    return output if learner.n_classes else output[..., :1]


def the_network(learner, network, generator):
    return network


class Algorithm(NamedTuple):
    meta_update: Callable
    predict: Callable = gradient_steps
    parameters: Callable = the_network  # parameters(learner, network, generator): its meta-parameters
    steps: bool = True  # predicts after gradient steps (else in one pass from the support set)
    regression: bool = True  # applies to regression tasks as well as classification
    any_way: bool = False  # may meta-train on tasks of more classes than it is tested on
    head_only: bool = False  # adapts only the final layer, in meta-training and at test
    anneals: bool = False  # its steps follow a schedule over meta_iterations, which a resume may not change


ALGORITHMS = {
    "maml": Algorithm(maml),
    "fomaml": Algorithm(fomaml),
    "anil": Algorithm(anil, head_only=True),
    "reptile": Algorithm(reptile, anneals=True),
    "metasgd": Algorithm(metasgd, metasgd_steps, metasgd_parameters),
    "protonet": Algorithm(one_pass_update(protonet_logits, classification_loss), predicted_once(protonet_logits),
                          protonet_parameters, steps=False, regression=False, any_way=True),
    "cnp": Algorithm(one_pass_update(cnp_output, cnp_loss), predicted_once(cnp_output, cnp_point),
                     cnp_parameters, steps=False),
}
# batch_norm: "transductive" (each task normalised with its own batch's statistics, as the
# paper's code does, ALGORITHMS) or "running" (statistics kept in meta-training, used at test).
RUNNING_BATCH_NORM = {
    "protonet": Algorithm(protonet_running_update, predicted_once(protonet_running_logits),
                          protonet_running_parameters, steps=False, regression=False, any_way=True),
}
BATCH_NORM = ("transductive", "running")


def choose(name, batch_norm="transductive"):
    """The algorithm of that name, with batch norm as asked; one line for running statistics
    asked of an algorithm without them."""
    if batch_norm != "running":
        return ALGORITHMS[name]
    if name not in RUNNING_BATCH_NORM:
        utils.fail(f"--batch-norm running applies to {', '.join(RUNNING_BATCH_NORM)}, not {name}, whose test "
                   f"adapts each task with its own images' statistics")
    return RUNNING_BATCH_NORM[name]


def free_on_resume(config):
    """The settings that a resumed run (config: its settings, a dict) may change:
    its budget of iterations, unless its algorithm follows a schedule over them."""
    return set() if ALGORITHMS[config["algorithm"]].anneals else {"meta_iterations"}
