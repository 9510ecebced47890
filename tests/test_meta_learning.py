"""The vmapped meta-learning core against plain per-task references, in float64."""
import functools

import pytest
import torch
import torch.nn.functional as F

import meta_learning
import models


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def mse(prediction, y):
    return (prediction - y).pow(2).mean()


def relative_error(a, b):
    """The largest relative difference of a tensor of a from its tensor of b; relative to a
    ten-thousandth of b's whole norm for a tensor that is zero up to rounding (the gradient of a
    convolution's bias before batch norm)."""
    whole = torch.stack([y.norm() for y in b]).norm()
    return max(((x - y).norm() / torch.maximum(y.norm(), 1e-4 * whole)).item() for x, y in zip(a, b))


def meta_gradient(meta_loss_fn, forward, loss_fn, params, support, query, steps, lr, first_order):
    loss, _ = meta_loss_fn(forward, loss_fn, params, support, query, steps, lr, first_order)
    return torch.autograd.grad(loss, params)


def mlp_problem(generator):
    params = [p.requires_grad_() for p in models.init_mlp([1, 40, 40, 1], generator=generator,
                                                           dtype=torch.float64)]
    x = torch.rand(5, 20, 1, generator=generator) * 10 - 5
    y = torch.sin(x) * torch.rand(5, 1, 1, generator=generator) * 4
    return models.mlp, mse, params, (x[:, :10], y[:, :10]), (x[:, 10:], y[:, 10:]), 0.01


def cnn_problem(generator, net=models.CNN):
    n_way, tasks = 3, 4
    params = [p.requires_grad_() for p in models.init_cnn(n_way, generator=generator, dtype=torch.float64, net=net)]
    images = torch.rand(tasks, 2 * 2 * n_way, 1, 28, 28, generator=generator)
    labels = torch.arange(n_way).repeat(4).expand(tasks, -1)
    forward = functools.partial(models.cnn, net=net)
    return (forward, F.cross_entropy, params, (images[:, :6], labels[:, :6]),
            (images[:, 6:], labels[:, 6:]), 0.4)


def bn_mlp_problem(generator):
    params = [p.requires_grad_() for p in models.init_mlp([784, 256, 128, 64, 64, 5], batch_norm=True,
                                                           generator=generator, dtype=torch.float64)]
    images = torch.rand(3, 20, 784, generator=generator)
    labels = torch.arange(5).repeat(4).expand(3, -1)
    forward = functools.partial(models.mlp, batch_norm=True)
    return forward, F.cross_entropy, params, (images[:, :10], labels[:, :10]), (images[:, 10:], labels[:, 10:]), 0.4


PROBLEMS = {"mlp": mlp_problem, "cnn": cnn_problem,
            "cnn-maxpool": functools.partial(cnn_problem, net=models.ConvNet(max_pool=True)),
            "official-cnn": functools.partial(cnn_problem, net=models.OFFICIAL_CNN), "mlp-batchnorm": bn_mlp_problem}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_meta_gradient_matches_per_task_loop(problem, steps, first_order):
    forward, loss_fn, params, support, query, lr = PROBLEMS[problem](torch.Generator().manual_seed(0))
    args = (forward, loss_fn, params, support, query, steps, lr, first_order)
    vmapped = meta_gradient(meta_learning.maml_meta_loss, *args)
    loop = meta_gradient(meta_learning.maml_meta_loss_loop, *args)
    assert relative_error(vmapped, loop) < 1e-10
    loss_vmapped, predictions_vmapped = meta_learning.maml_meta_loss(*args)
    loss_loop, predictions_loop = meta_learning.maml_meta_loss_loop(*args)
    torch.testing.assert_close(loss_vmapped, loss_loop, rtol=1e-12, atol=0)
    torch.testing.assert_close(predictions_vmapped, predictions_loop, rtol=1e-10, atol=1e-12)


GROUPINGS = {"all-vmapped": dict(tasks_per_call=None, batched=True),
             "pairs-vmapped": dict(tasks_per_call=2, batched=True),
             "one-by-one": dict(tasks_per_call=1, batched=False),
             "threes-looped": dict(tasks_per_call=3, batched=False)}


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_grouped_meta_gradient_matches_per_task_loop(grouping, problem, steps, first_order):
    """maml_meta_gradient, whatever its grouping, accumulates the loop's meta-gradient into .grad."""
    forward, loss_fn, params, support, query, lr = PROBLEMS[problem](torch.Generator().manual_seed(4))
    args = (forward, loss_fn, params, support, query, steps, lr, first_order)
    expected = meta_gradient(meta_learning.maml_meta_loss_loop, *args)
    expected_loss, expected_predictions = meta_learning.maml_meta_loss_loop(*args)
    for p in params:
        p.grad = torch.ones_like(p)  # accumulated into, as loss.backward() would
    loss, predictions = meta_learning.maml_meta_gradient(*args, **GROUPINGS[grouping])
    assert relative_error([p.grad - 1 for p in params], expected) < 1e-10
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(predictions, expected_predictions.detach(), rtol=1e-10, atol=1e-12)
    assert not loss.requires_grad and not predictions.requires_grad


def test_task_grouping_batches_all_tasks_on_a_gpu_and_groups_them_on_a_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert meta_learning.task_grouping(gpu, 32, 100) == dict(tasks_per_call=None, batched=True)
    images, fewest = meta_learning.CPU_IMAGES_PER_CALL, meta_learning.MIN_TASKS_PER_CALL
    assert meta_learning.task_grouping(cpu, 32, images // 8) == dict(tasks_per_call=8, batched=True)
    assert meta_learning.task_grouping(cpu, 4, images // 8) == dict(tasks_per_call=4, batched=True)
    assert meta_learning.task_grouping(cpu, 32, images // fewest) == dict(tasks_per_call=fewest, batched=True)
    assert meta_learning.task_grouping(cpu, 32, images // fewest + 1) == dict(tasks_per_call=1, batched=False)
    assert meta_learning.task_grouping(cpu, 32, images) == dict(tasks_per_call=1, batched=False)


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_first_order_meta_gradient_is_query_gradient_at_adapted_params(problem):
    """FOMAML: the mean over tasks of the query-loss gradient at phi, with phi
    reached by inner steps whose gradients are treated as constants."""
    forward, loss_fn, params, support, query, lr = PROBLEMS[problem](torch.Generator().manual_seed(1))
    steps = 2
    expected = [torch.zeros_like(p) for p in params]
    for sx, sy, qx, qy in zip(*support, *query):
        phi = [p.detach() for p in params]
        for _ in range(steps):
            phi = [p.requires_grad_() for p in phi]
            grads = torch.autograd.grad(loss_fn(forward(phi, sx), sy), phi)
            phi = [(p - lr * g).detach() for p, g in zip(phi, grads)]
        phi = [p.requires_grad_() for p in phi]
        for total, g in zip(expected, torch.autograd.grad(loss_fn(forward(phi, qx), qy), phi)):
            total += g / len(support[0])
    args = (forward, loss_fn, params, support, query, steps, lr)
    first_order = meta_gradient(meta_learning.maml_meta_loss, *args, first_order=True)
    second_order = meta_gradient(meta_learning.maml_meta_loss, *args, first_order=False)
    assert relative_error(first_order, expected) < 1e-10
    assert relative_error(second_order, expected) > 1e-4  # the second-order terms are really there


def hand_adapted_line(w, b, xs, ys, steps, lr, optimizer, batch_size):
    """Inner loop on y ~ w x + b written out with Python floats."""
    v_w = v_b = 0.0
    for step in range(steps):
        index = [(step * batch_size + i) % len(xs) for i in range(batch_size)]
        residual = [w * xs[i] + b - ys[i] for i in index]
        g_w = 2 * sum(r * xs[i] for r, i in zip(residual, index)) / batch_size
        g_b = 2 * sum(residual) / batch_size
        if optimizer == "sgd":
            w, b = w - lr * g_w, b - lr * g_b
        else:
            beta2 = meta_learning.ADAM_BETA2
            v_w, v_b = beta2 * v_w + (1 - beta2) * g_w ** 2, beta2 * v_b + (1 - beta2) * g_b ** 2
            correction = 1 - beta2 ** (step + 1)
            eps = meta_learning.ADAM_EPS
            w -= lr * g_w / ((v_w / correction) ** 0.5 + eps)
            b -= lr * g_b / ((v_b / correction) ** 0.5 + eps)
    return w, b


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("batch_size", [3, 6])
def test_reptile_meta_step_moves_params_by_eps_times_mean_displacement(optimizer, batch_size):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(4, 6, 1, generator=generator)
    y = torch.rand(4, 6, 1, generator=generator)
    w0, b0, steps, lr, eps = 0.3, -0.2, 3, 0.1, 0.7
    params = [torch.tensor([[w0]]), torch.tensor([b0])]
    returned_loss, predictions = meta_learning.reptile_meta_step(models.mlp, mse, params, (x, y), steps, lr, eps,
                                                    optimizer=optimizer, batch_size=batch_size)
    adapted = [hand_adapted_line(w0, b0, x[t, :, 0].tolist(), y[t, :, 0].tolist(), steps, lr,
                                 optimizer, batch_size) for t in range(4)]
    expected_w = w0 + eps * sum(w - w0 for w, _ in adapted) / 4
    expected_b = b0 + eps * sum(b - b0 for _, b in adapted) / 4
    assert params[0].item() == pytest.approx(expected_w, rel=1e-12)
    assert params[1].item() == pytest.approx(expected_b, rel=1e-12)
    expected_loss = sum(((w * x[t] + b - y[t]) ** 2).mean().item() for t, (w, b) in enumerate(adapted)) / 4
    assert returned_loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert predictions[1, 2, 0].item() == pytest.approx(adapted[1][0] * x[1, 2, 0].item() + adapted[1][1], rel=1e-12)


@pytest.mark.parametrize("head_only", [False, True])
def test_evaluate_adaptation_reports_metric_after_each_step(head_only):
    forward, loss_fn, params, support, query, lr = mlp_problem(torch.Generator().manual_seed(3))
    per_step = meta_learning.evaluate_adaptation(forward, loss_fn, loss_fn, params, support, query, 3, lr,
                                                 adapted=meta_learning.inner_loop_mask(len(params), head_only=head_only))
    assert per_step.shape == (5, 4)
    reference = anil_reference if head_only else meta_learning.maml_meta_loss_loop
    for task in range(5):
        for steps in range(4):
            _, prediction = reference(
                forward, loss_fn, params, (support[0][task:task + 1], support[1][task:task + 1]),
                (query[0][task:task + 1], query[1][task:task + 1]), steps, lr)
            expected = loss_fn(prediction[0], query[1][task])
            assert per_step[task, steps].item() == pytest.approx(expected.item(), rel=1e-10)


# ---- ANIL ----------------------------------------------------------------------------
def anil_reference(forward, loss_fn, params, support, query, steps, lr, first_order=False):
    """ANIL task by task: the final layer's weight and bias take SGD steps on the
    support set (torch.autograd.grad), every other parameter stays as it is."""
    *body, weight, bias = params
    losses, predictions = [], []
    for support_x, support_y, query_x, query_y in zip(*support, *query):
        w, b = weight, bias
        for _ in range(steps):
            loss = loss_fn(forward([*body, w, b], support_x), support_y)
            grad_w, grad_b = torch.autograd.grad(loss, (w, b), create_graph=not first_order)
            w, b = w - lr * grad_w, b - lr * grad_b
        prediction = forward([*body, w, b], query_x)
        losses.append(loss_fn(prediction, query_y))
        predictions.append(prediction)
    return torch.stack(losses).mean(), torch.stack(predictions)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_matches_per_task_reference(problem, steps, first_order):
    forward, loss_fn, params, support, query, lr = PROBLEMS[problem](torch.Generator().manual_seed(5))
    args = (forward, loss_fn, params, support, query, steps, lr, first_order)
    expected = meta_gradient(anil_reference, *args)
    head = meta_learning.inner_loop_mask(len(params), head_only=True)
    anil = functools.partial(meta_learning.maml_meta_loss, adapted=head)
    assert relative_error(meta_gradient(anil, *args), expected) < 1e-10
    loop = functools.partial(meta_learning.maml_meta_loss_loop, adapted=head)
    assert relative_error(meta_gradient(loop, *args), expected) < 1e-10
    for grouping in GROUPINGS.values():  # as the scripts call it
        for p in params:
            p.grad = None
        meta_learning.maml_meta_gradient(*args, adapted=head, **grouping)
        assert relative_error([p.grad for p in params], expected) < 1e-10
    assert all(g.abs().sum() > 0 for g in expected)  # the meta-gradient reaches every layer
    maml = meta_gradient(meta_learning.maml_meta_loss, *args)
    assert relative_error(expected, maml) > 1e-4  # and ANIL is not MAML


def test_anil_second_order_terms_reach_the_body():
    forward, loss_fn, params, support, query, lr = cnn_problem(torch.Generator().manual_seed(6))
    args = (forward, loss_fn, params, support, query, 2, lr)
    second = meta_gradient(anil_reference, *args, first_order=False)
    first = meta_gradient(anil_reference, *args, first_order=True)
    assert relative_error(second[:-2], first[:-2]) > 1e-4


# ---- the algorithms' one interface -------------------------------------------------
@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "reptile"])
def test_every_algorithm_is_one_meta_update_of_the_same_signature(name):
    forward, loss_fn, params, support, query, lr = mlp_problem(torch.Generator().manual_seed(7))
    learner = meta_learning.Learner(forward, loss_fn, inner_steps=2, inner_lr=lr, meta_batch_size=5,
                                    meta_iterations=10, meta_step=0.5, tasks_per_call=2)
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)  # so that the step is the meta-gradient itself
    algorithm = meta_learning.ALGORITHMS[name]
    loss, predictions, targets = algorithm.meta_update(learner, params, optimizer, support, query, iteration=4)
    if name == "reptile":  # in place: theta + eps (1 - 4 / 10) mean(phi - theta), on support and query together
        expected = [p.detach().clone() for p in start]
        tasks = [torch.cat(parts, 1) for parts in zip(support, query)]
        meta_learning.reptile_meta_step(forward, loss_fn, expected, tasks, 2, lr, 0.5 * 0.6, optimizer="sgd")
        assert targets.shape == tasks[1].shape
    else:
        reference = anil_reference if algorithm.head_only else meta_learning.maml_meta_loss_loop
        gradient = meta_gradient(reference, forward, loss_fn, [p.clone().requires_grad_() for p in start],
                                 support, query, 2, lr, name == "fomaml")
        expected = [p - g for p, g in zip(start, gradient)]
        assert torch.equal(targets, query[1])
    assert relative_error([p - s for p, s in zip(params, start)], [e - s for e, s in zip(expected, start)]) < 1e-10
    assert loss.shape == () and not loss.requires_grad and predictions.shape == targets.shape


def classification_learner(forward, loss_fn, lr, n_classes, **fields):
    return meta_learning.Learner(forward, loss_fn, meta_batch_size=4, meta_iterations=10, inner_steps=2, inner_lr=lr,
                                 features=models.cnn_features, n_classes=n_classes, tasks_per_call=2, **fields)


@pytest.mark.parametrize("name", meta_learning.ALGORITHMS)
def test_every_algorithm_meta_trains_and_predicts_through_the_one_interface(name):
    """Each algorithm's meta-parameters, meta-update and prediction on a classification
    problem: a loss, predictions like the targets', a change of every meta-parameter, and
    accuracies per test step (or one, for an algorithm that predicts in one pass)."""
    forward, loss_fn, network, support, query, lr = cnn_problem(torch.Generator().manual_seed(13))
    learner = classification_learner(forward, loss_fn, lr, n_classes=3)
    algorithm = meta_learning.ALGORITHMS[name]
    params = algorithm.parameters(learner, network, torch.Generator().manual_seed(14))
    start = [p.detach().clone() for p in params]
    loss, predictions, targets = algorithm.meta_update(learner, params, torch.optim.Adam(params, lr=1e-3), support,
                                                       query, iteration=0)
    assert loss.shape == () and not loss.requires_grad and predictions.shape[:-1] == targets.shape
    assert all(not torch.equal(p, s) for p, s in zip(params, start))

    def accuracy(logits, labels):
        return (logits.argmax(-1) == labels).double().mean()
    per_task = meta_learning.evaluate(algorithm, learner, accuracy, params, support, query, steps=3, lr=lr)
    assert per_task.shape == (4, 4 if algorithm.steps else 1)


# ---- Meta-SGD ----------------------------------------------------------------------------
def metasgd_reference(forward, loss_fn, network, step_sizes, support, query, steps):
    """Meta-SGD task by task: each parameter entry takes its own step size, p - a * g, the
    inner gradients by torch.autograd.grad in the graph; the mean query loss, and the
    per-task query losses after 0..steps steps."""
    losses, per_step = [], []
    for support_x, support_y, query_x, query_y in zip(*support, *query):
        task, curve = list(network), []
        for _ in range(steps):
            curve.append(loss_fn(forward(task, query_x), query_y))
            grads = torch.autograd.grad(loss_fn(forward(task, support_x), support_y), task, create_graph=True)
            task = [p - a * g for p, a, g in zip(task, step_sizes, grads)]
        losses.append(loss_fn(forward(task, query_x), query_y))
        per_step.append(torch.stack(curve + [losses[-1]]))
    return torch.stack(losses).mean(), torch.stack(per_step)


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_meta_gradient_and_prediction_match_a_per_task_loop(problem, steps):
    generator = torch.Generator().manual_seed(15)
    forward, loss_fn, network, support, query, lr = PROBLEMS[problem](generator)
    learner = meta_learning.Learner(forward, loss_fn, meta_batch_size=len(support[0]), meta_iterations=10,
                                    inner_steps=steps, inner_lr=lr, tasks_per_call=2)
    metasgd = meta_learning.ALGORITHMS["metasgd"]
    params = metasgd.parameters(learner, network, None)
    half = len(params) // 2
    assert all(torch.equal(a, torch.full_like(p, lr)) for p, a in zip(params[:half], params[half:]))  # starts as MAML
    with torch.no_grad():  # a step size of its own for every entry
        for a in params[half:]:
            a.mul_(0.5 + torch.rand(a.shape, generator=generator))
    loss, per_step = metasgd_reference(forward, loss_fn, params[:half], params[half:], support, query, steps)
    expected = torch.autograd.grad(loss, params)
    metasgd.meta_update(learner, params, torch.optim.SGD(params, lr=0.0), support, query, iteration=0)
    assert relative_error([p.grad for p in params], expected) < 1e-10
    assert all(g.abs().sum() > 0 for g in expected[half:])  # the step sizes are meta-learned
    evaluated = meta_learning.evaluate(metasgd, learner, loss_fn, params, support, query, steps, lr=123.0)
    torch.testing.assert_close(evaluated, per_step.detach(), rtol=1e-10, atol=0)  # its own step sizes, not lr


# ---- Prototypical Networks ---------------------------------------------------------------
def test_prototype_logits_match_a_loop_over_classes():
    generator = torch.Generator().manual_seed(16)
    n_classes, shots = 4, 3
    support_y = torch.arange(n_classes).repeat(shots)[torch.randperm(n_classes * shots, generator=generator)]
    support_features = torch.randn(n_classes * shots, 7, generator=generator)
    query_features = torch.randn(5, 7, generator=generator)
    logits = meta_learning.prototype_logits(support_features, support_y, query_features, n_classes)
    expected = torch.empty(5, n_classes)
    for c in range(n_classes):
        prototype = support_features[support_y == c].mean(dim=0)
        for q in range(5):
            expected[q, c] = -sum((query_features[q, d] - prototype[d]) ** 2 for d in range(7))
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_protonet_meta_gradient_matches_a_per_task_loop_on_episodes_of_more_classes():
    """Training episodes of 6 classes, test tasks of 3: the same embedding serves both."""
    generator = torch.Generator().manual_seed(17)
    network = [p.requires_grad_() for p in models.init_cnn(3, generator=generator, dtype=torch.float64)]
    images = torch.rand(2, 6 * 3, 1, 28, 28, generator=generator)
    labels = torch.arange(6).repeat(3).expand(2, -1)
    support, query = (images[:, :6], labels[:, :6]), (images[:, 6:], labels[:, 6:])
    learner = classification_learner(models.cnn, F.cross_entropy, None, n_classes=3, train_classes=6)
    learner.meta_batch_size = 2
    protonet = meta_learning.ALGORITHMS["protonet"]
    body = protonet.parameters(learner, network, None)
    assert len(body) == len(network) - 2  # the network without its output layer

    def task_logits(support_x, support_y, query_x, n_classes):
        features = models.cnn_features(body, torch.cat([support_x, query_x]))  # one batch: one batch norm
        support_features, query_features = features[:len(support_x)], features[len(support_x):]
        prototypes = torch.stack([support_features[support_y == c].mean(0) for c in range(n_classes)])
        return -((query_features[:, None] - prototypes[None]) ** 2).sum(-1)
    loss = sum(F.cross_entropy(task_logits(sx, sy, qx, 6), qy) for sx, sy, qx, qy in zip(*support, *query)) / 2
    expected = torch.autograd.grad(loss, body)
    protonet.meta_update(learner, body, torch.optim.SGD(body, lr=0.0), support, query, iteration=0)
    assert relative_error([p.grad for p in body], expected) < 1e-10
    test_support, test_query = (images[:, :3], labels[:, :3]), (images[:, 6:9], labels[:, 6:9])
    logits = meta_learning.evaluate(protonet, learner, lambda p, y: p, body, test_support, test_query, steps=3)
    for task in range(2):
        torch.testing.assert_close(logits[task, 0], task_logits(images[task, :3], labels[task, :3],
                                                                images[task, 6:9], 3).detach(), rtol=1e-10, atol=0)


def reference_cnn_features(body, x, running, training):
    """Our CNN's body with torch's own batch norm (F.batch_norm) and its running buffers:
    in training it normalises with the batch's statistics and updates the buffers in
    place; otherwise it normalises with them."""
    for block, (mean, var) in zip(range(0, len(body), 3), running):
        weight, gamma, beta = body[block:block + 3]
        x = F.conv2d(x, weight, stride=2, padding=1)
        x = torch.relu(F.batch_norm(x, mean, var, gamma, beta, training=training, momentum=0.1,
                                    eps=models.BATCH_NORM_EPS))
    return x.mean(dim=(2, 3))


def test_protonet_with_running_batch_norm_matches_torchs_batch_norm():
    """Meta-training normalises with each episode's statistics and moves the running ones
    as torch's batch norm does (one episode a meta-batch, Prototypical Networks' own
    setting: the same gradient, the same buffers after three updates); validation and
    test normalise with the running statistics, so a query's logits do not depend on
    the task's other images."""
    generator = torch.Generator().manual_seed(21)
    network = [p.requires_grad_() for p in models.init_cnn(3, generator=generator, dtype=torch.float64)]
    learner = classification_learner(models.cnn, F.cross_entropy, None, n_classes=3, train_classes=6)
    learner.meta_batch_size = 1
    protonet = meta_learning.choose("protonet", "running")
    params = protonet.parameters(learner, network, None)
    body, running = meta_learning.running_statistics(params)
    assert len(body) == len(network) - 2 and [m.tolist() for m, _ in running] == [[0.0] * 64] * 4
    reference = [(torch.zeros(64), torch.ones(64)) for _ in running]

    def logits(features, support_y, n_support, n_classes):
        support, query = features[:n_support], features[n_support:]
        prototypes = torch.stack([support[support_y == c].mean(0) for c in range(n_classes)])
        return -((query[:, None] - prototypes[None]) ** 2).sum(-1)
    for iteration in range(3):
        images = torch.rand(1, 6 * 3, 1, 28, 28, generator=generator)
        labels = torch.arange(6).repeat(3).expand(1, -1)
        support, query = (images[:, :6], labels[:, :6]), (images[:, 6:], labels[:, 6:])
        features = reference_cnn_features(body, images[0], reference, training=True)
        expected = torch.autograd.grad(F.cross_entropy(logits(features, labels[0, :6], 6, 6), labels[0, 6:]), body)
        protonet.meta_update(learner, params, torch.optim.SGD(params, lr=0.0), support, query, iteration)
        assert relative_error([p.grad for p in body], expected) < 1e-10
        assert all(p.grad is None for layer in running for p in layer)  # not learned: averaged
        for (mean, var), (expected_mean, expected_var) in zip(running, reference):
            torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(var, expected_var, rtol=1e-12, atol=1e-12)
    test = torch.rand(2, 3 * 2, 1, 28, 28, generator=generator)
    test_labels = torch.arange(3).repeat(2).expand(2, -1)
    predicted = meta_learning.evaluate(protonet, learner, lambda p, y: p, params, (test[:, :3], test_labels[:, :3]),
                                       (test[:, 3:], test_labels[:, 3:]), steps=0)
    for task in range(2):
        features = reference_cnn_features(body, test[task], reference, training=False)
        torch.testing.assert_close(predicted[task, 0], logits(features, test_labels[task, :3], 3, 3).detach(),
                                   rtol=1e-10, atol=0)
    # non-transductive: the logits of one query image alone are those it has among the others
    alone = meta_learning.protonet_running_logits(learner, params, test[0, :3], test_labels[0, :3], test[0, 3:4], 3)
    torch.testing.assert_close(alone[0], predicted[0, 0, 0], rtol=1e-10, atol=0)


def test_running_statistics_of_a_meta_batch_are_the_mean_of_its_tasks():
    """Two episodes in a meta-batch move the running statistics by the mean of theirs."""
    generator = torch.Generator().manual_seed(22)
    network = [p.requires_grad_() for p in models.init_mlp([784, 32, 16, 4], batch_norm=True, generator=generator,
                                                           dtype=torch.float64)]
    learner = meta_learning.Learner(functools.partial(models.mlp, batch_norm=True), F.cross_entropy,
                                    meta_batch_size=2, meta_iterations=1, n_classes=4,
                                    features=lambda body, x, **kw: models.mlp_features(body, x, True, **kw))
    protonet = meta_learning.choose("protonet", "running")
    params = protonet.parameters(learner, network, None)
    x = torch.rand(2, 16, 784, generator=generator)
    y = torch.arange(4).repeat(4).expand(2, -1)
    protonet.meta_update(learner, params, torch.optim.SGD(params, lr=0.0), (x[:, :8], y[:, :8]),
                         (x[:, 8:], y[:, 8:]), iteration=0)
    body, running = meta_learning.running_statistics(params)
    hidden = [F.linear(x, body[0])]
    normalized = (hidden[0] - hidden[0].mean(1, keepdim=True)) / (hidden[0].var(1, correction=0, keepdim=True)
                                                                  + models.BATCH_NORM_EPS).sqrt()
    hidden.append(F.linear(torch.relu(normalized * body[1] + body[2]), body[3]))
    for (mean, var), h in zip(running, hidden):
        torch.testing.assert_close(mean, 0.1 * h.mean(1).mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, 0.9 + 0.1 * h.var(1).mean(0), rtol=1e-12, atol=1e-12)


# ---- the Conditional Neural Process -------------------------------------------------------
def cnp_problem(kind, generator):
    if kind == "classification":
        network = [p.requires_grad_() for p in models.init_cnn(3, generator=generator, dtype=torch.float64)]
        x = torch.rand(2, 12, 1, 28, 28, generator=generator)
        y = torch.arange(3).repeat(4).expand(2, -1)
        learner = classification_learner(models.cnn, F.cross_entropy, None, n_classes=3)
    else:
        network = [p.requires_grad_() for p in models.init_mlp([1, 40, 40, 1], generator=generator,
                                                                dtype=torch.float64)]
        x = torch.rand(2, 12, 1, generator=generator) * 10 - 5
        y = torch.sin(x)
        learner = meta_learning.Learner(models.mlp, mse, meta_batch_size=4, meta_iterations=10,
                                        features=models.mlp_features)
    learner.meta_batch_size = 2
    params = meta_learning.ALGORITHMS["cnp"].parameters(learner, network, generator)
    return learner, params, (x[:, :6], y[:, :6]), (x[:, 6:], y[:, 6:])


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_cnp_output_does_not_depend_on_the_order_of_the_support_set_but_on_its_labels(kind):
    learner, params, support, query = cnp_problem(kind, torch.Generator().manual_seed(18))
    n_classes = learner.n_classes
    output = meta_learning.cnp_output(learner, params, support[0][0], support[1][0], query[0][0], n_classes)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(19))
    shuffled = meta_learning.cnp_output(learner, params, support[0][0][order], support[1][0][order], query[0][0],
                                        n_classes)
    torch.testing.assert_close(shuffled, output, rtol=1e-12, atol=1e-12)
    relabelled = support[1][0].roll(1) if n_classes else support[1][0] + 1
    other = meta_learning.cnp_output(learner, params, support[0][0], relabelled, query[0][0], n_classes)
    assert (other - output).abs().max() > 1e-6  # it reads the labels


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_cnp_meta_gradient_matches_a_per_task_loop_of_its_likelihood(kind):
    """Regression: the Gaussian negative log-likelihood of torch.distributions; classification:
    the cross-entropy of the logits; each task by itself."""
    learner, params, support, query = cnp_problem(kind, torch.Generator().manual_seed(20))
    losses = []
    for sx, sy, qx, qy in zip(*support, *query):
        output = meta_learning.cnp_output(learner, params, sx, sy, qx, learner.n_classes)
        if kind == "classification":
            losses.append(F.cross_entropy(output, qy))
        else:
            std = 0.1 + 0.9 * F.softplus(output[:, 1:])
            losses.append(-torch.distributions.Normal(output[:, :1], std).log_prob(qy).mean())
    expected = torch.autograd.grad(torch.stack(losses).mean(), params)
    cnp = meta_learning.ALGORITHMS["cnp"]
    loss, _, _ = cnp.meta_update(learner, params, torch.optim.SGD(params, lr=0.0), support, query, iteration=0)
    assert loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-12)
    assert relative_error([p.grad for p in params], expected) < 1e-10


def test_the_meta_learning_rate_is_halved_on_its_schedule():
    params = [torch.zeros(2, requires_grad=True)]
    optimizer = torch.optim.SGD(params, lr=1.0)
    learner = meta_learning.Learner(None, None, meta_batch_size=1, meta_iterations=10, meta_lr=1e-3,
                                    meta_lr_halving=2000)
    rates = []
    for iteration in (0, 1999, 2000, 4000, 5999):
        params[0].grad = torch.ones(2)
        learner.step(params, optimizer, iteration)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == [1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4]


# ---- the official code's network (models.OFFICIAL_CNN) ---------------------------------
def test_tf_same_padding_takes_the_windows_tensorflow_takes():
    """Each output pixel of a stride-2 'SAME' convolution against a sum over its window,
    which starts at pixel stride * i - pad_top (TensorFlow: the odd pad goes below)."""
    generator = torch.Generator().manual_seed(8)
    for size in (28, 14, 7, 4):
        x, weight = torch.rand(1, 1, size, size, generator=generator), torch.rand(1, 1, 3, 3, generator=generator)
        out = torch.nn.functional.conv2d(models.tf_same_pad(x, 2), weight, stride=2)
        out_size = -(-size // 2)
        pad_top = max((out_size - 1) * 2 + 3 - size, 0) // 2
        assert out.shape[-1] == out_size
        for i in range(out_size):
            for j in range(out_size):
                expected = sum(weight[0, 0, a, b] * x[0, 0, 2 * i - pad_top + a, 2 * j - pad_top + b]
                               for a in range(3) for b in range(3)
                               if 0 <= 2 * i - pad_top + a < size and 0 <= 2 * j - pad_top + b < size)
                assert out[0, 0, i, j].item() == pytest.approx(float(expected), rel=1e-12)


def test_official_network_initialisation_and_layout():
    params = models.init_cnn(5, generator=torch.Generator().manual_seed(9), net=models.OFFICIAL_CNN)
    assert [tuple(p.shape) for p in params[:3]] == [(64, 1, 3, 3), (64,), (64,)]  # weight, bias, offset: no scale
    assert len(params) == 4 * 3 + 2
    for block in range(4):
        weight, bias, offset = params[3 * block:3 * block + 3]
        fan_in, fan_out = 9 * weight.shape[1], 9 * weight.shape[0]
        assert weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform
        assert weight.abs().max() > 0.9 * (6 / (fan_in + fan_out)) ** 0.5
        assert not bias.any() and not offset.any()
    head, head_bias = params[-2:]
    assert 0.9 < head.std().item() < 1.1 and not head_bias.any()  # N(0, 1)
    mask = models.OFFICIAL_CNN.inner_loop_mask(len(params))
    assert mask == (True, True, False) * 4 + (True, True)


def test_a_convolution_bias_before_batch_norm_changes_nothing():
    net = models.OFFICIAL_CNN
    params = models.init_cnn(3, generator=torch.Generator().manual_seed(10), dtype=torch.float64, net=net)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    shifted = [p + 5.0 if i % 3 == 1 and i < 12 else p for i, p in enumerate(params)]
    torch.testing.assert_close(models.cnn(shifted, images, net=net), models.cnn(params, images, net=net),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_official_network_meta_gradient_with_batch_norm_out_of_the_inner_loop(steps, first_order):
    forward, loss_fn, params, support, query, lr = cnn_problem(torch.Generator().manual_seed(12), models.OFFICIAL_CNN)
    mask = models.OFFICIAL_CNN.inner_loop_mask(len(params))
    args = (forward, loss_fn, params, support, query, steps, lr, first_order)
    vmapped = meta_gradient(functools.partial(meta_learning.maml_meta_loss, adapted=mask), *args)
    loop = meta_gradient(functools.partial(meta_learning.maml_meta_loss_loop, adapted=mask), *args)
    assert relative_error(vmapped, loop) < 1e-10
    everything = meta_gradient(meta_learning.maml_meta_loss, *args)
    assert relative_error(vmapped, everything) > 1e-4  # the offsets' staying put changes the meta-gradient
    offsets = [g for g, m in zip(vmapped, mask) if not m]
    assert all(g.abs().sum() > 0 for g in offsets)  # and they are meta-learned
