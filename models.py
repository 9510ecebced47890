"""Functional networks: every forward pass takes its parameters as an explicit list.

Nothing here holds state, so the meta-learning code can pass in adapted
parameters (one list per task, or a batch of them under torch.func.vmap) and
get gradients through them without touching any module.

Parameter layouts (what the init functions return, in order):
  mlp:  per hidden layer [weight, bias] or, with batch norm, [weight, gamma, beta];
        then the output layer [weight, bias].
  cnn:  per conv block [weight, gamma, beta]; then the output layer [weight, bias].
A linear or conv bias right before batch norm is left out: the mean subtraction
cancels it exactly, so it would never learn anything.
"""
import math

import torch
import torch.nn.functional as F

BATCH_NORM_EPS = 1e-5


def batch_normalize(h, gamma, beta, dims):
    """Normalise h with the statistics of this very batch, then scale and shift.

    Written as mean/variance arithmetic on purpose: under torch.func.vmap the
    second-order gradient through F.batch_norm in training mode is silently
    wrong on torch 2.13 (relative error ~1e-3 on the Omniglot CNN;
    pytorch/functorch#534), and MAML's meta-gradient is exactly that.
    """
    mean = h.mean(dims, keepdim=True)
    var = (h - mean).pow(2).mean(dims, keepdim=True)
    shape = [1] * h.dim()
    shape[1] = -1
    return (h - mean) * torch.rsqrt(var + BATCH_NORM_EPS) * gamma.view(shape) + beta.view(shape)


def _uniform(shape, fan_in, generator, dtype):
    """PyTorch's default init for nn.Linear and nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return (2 * torch.rand(shape, generator=generator, dtype=dtype) - 1) * bound


def init_mlp(sizes, batch_norm=False, generator=None, dtype=torch.float32):
    """Parameters of an MLP with layer sizes like [1, 40, 40, 1] (ReLU between layers):
    He-normal weights (std sqrt(2 / fan_in), sqrt(1 / fan_in) for the output layer,
    which has no ReLU after it) and zero biases."""
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        is_output = i == len(sizes) - 2
        gain = 1.0 if is_output else 2.0
        params.append(torch.randn((fan_out, fan_in), generator=generator, dtype=dtype) * math.sqrt(gain / fan_in))
        if batch_norm and not is_output:
            params += [torch.ones(fan_out, dtype=dtype), torch.zeros(fan_out, dtype=dtype)]
        else:
            params.append(torch.zeros(fan_out, dtype=dtype))
    return params


def mlp(params, x, batch_norm=False):
    """Forward pass of init_mlp's network on x of shape (batch, in_features)."""
    per_hidden = 3 if batch_norm else 2
    n_hidden = (len(params) - 2) // per_hidden
    for i in range(n_hidden):
        layer = params[i * per_hidden:(i + 1) * per_hidden]
        if batch_norm:
            x = batch_normalize(F.linear(x, layer[0]), layer[1], layer[2], dims=(0,))
        else:
            x = F.linear(x, layer[0], layer[1])
        x = torch.relu(x)
    return F.linear(x, params[-2], params[-1])


def init_cnn(n_classes, in_channels=1, filters=64, blocks=4, generator=None, dtype=torch.float32):
    """Parameters of the paper's CNN: `blocks` x (3x3 conv, batch norm, ReLU), then linear."""
    params = []
    channels = in_channels
    for _ in range(blocks):
        params.append(_uniform((filters, channels, 3, 3), 9 * channels, generator, dtype))
        params += [torch.ones(filters, dtype=dtype), torch.zeros(filters, dtype=dtype)]
        channels = filters
    params.append(_uniform((n_classes, channels), channels, generator, dtype))
    params.append(_uniform((n_classes,), channels, generator, dtype))
    return params


def cnn(params, x, max_pool=False):
    """Forward pass of init_cnn's network on images x of shape (batch, channels, H, W).

    Each block halves the resolution: a stride-2 convolution (the paper's
    Omniglot network) or, with max_pool, a stride-1 convolution then 2x2 max-pool.
    The last feature map is averaged over space before the linear classifier.
    """
    n_blocks = (len(params) - 2) // 3
    for i in range(n_blocks):
        weight, gamma, beta = params[3 * i:3 * i + 3]
        x = F.conv2d(x, weight, stride=1 if max_pool else 2, padding=1)
        x = torch.relu(batch_normalize(x, gamma, beta, dims=(0, 2, 3)))
        if max_pool:
            x = F.max_pool2d(x, 2)
    return F.linear(x.mean(dim=(2, 3)), params[-2], params[-1])
