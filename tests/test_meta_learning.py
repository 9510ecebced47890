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
@pytest.mark.parametrize("name", meta_learning.ALGORITHMS)
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
