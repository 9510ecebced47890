"""Functional networks: every forward pass takes its parameters as an explicit list.

Nothing here holds state, so the meta-learning code can pass in adapted
parameters (one list per task, or a batch of them under torch.func.vmap) and
get gradients through them without touching any module.

Parameter layouts (what the init functions return, in order):
  mlp:  per hidden layer [weight, bias] or, with batch norm, [weight, gamma, beta];
        then the output layer [weight, bias].
  cnn:  per conv block [weight, gamma, beta]; then the output layer [weight, bias]
        (the official code's network, OFFICIAL_CNN: per block [weight, bias, beta]).
A linear or conv bias right before batch norm is left out of our networks: the mean
subtraction cancels it exactly, so it would never learn anything.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

BATCH_NORM_EPS = 1e-5


def batch_normalize(h, gamma, beta, dims, eps=BATCH_NORM_EPS, statistics=None):
    """Normalise h, then scale (unless gamma is None) and shift: with the statistics of
    this very batch (transductive), or with given ones, statistics = (mean, variance)
    per channel (running statistics, non-transductive).

    Written as mean/variance arithmetic on purpose: under torch.func.vmap the
    second-order gradient through F.batch_norm in training mode is silently
    wrong on torch 2.13 (relative error ~1e-3 on the Omniglot CNN;
    pytorch/functorch#534), and MAML's meta-gradient is exactly that.
    """
    shape = [1] * h.dim()
    shape[1] = -1
    if statistics is None:
        mean = h.mean(dims, keepdim=True)
        var = (h - mean).pow(2).mean(dims, keepdim=True)
    else:
        mean, var = (s.view(shape) for s in statistics)
    normalized = (h - mean) * torch.rsqrt(var + eps)
    if gamma is not None:
        normalized = normalized * gamma.view(shape)
    return normalized + beta.view(shape)


def normalized_layer(h, gamma, beta, dims, eps, layer, statistics, collected):
    """batch_normalize of the layer-th batch-norm layer, with statistics[layer] (statistics: a
    list of (mean, variance), one per layer; None: the batch's own); with collected (a list),
    what a running average takes from this batch is appended to it: the mean and the
    unbiased variance per channel (as torch's batch norm)."""
    if collected is not None:
        collected.append((h.mean(dims), h.var(dims, correction=1)))
    return batch_normalize(h, gamma, beta, dims, eps, None if statistics is None else statistics[layer])


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


def mlp_features(body, x, batch_norm=False, statistics=None, collected=None):
    """init_mlp's network without its output layer (body: its other parameters): the
    last hidden layer's activations for x of shape (batch, in_features). statistics and
    collected: batch norm's, as in normalized_layer."""
    per_hidden = 3 if batch_norm else 2
    for i in range(len(body) // per_hidden):
        layer = body[i * per_hidden:(i + 1) * per_hidden]
        if batch_norm:
            x = normalized_layer(F.linear(x, layer[0]), layer[1], layer[2], (0,), BATCH_NORM_EPS, i, statistics,
                                 collected)
        else:
            x = F.linear(x, layer[0], layer[1])
        x = torch.relu(x)
    return x


def mlp(params, x, batch_norm=False):
    """Forward pass of init_mlp's network on x of shape (batch, in_features)."""
    return F.linear(mlp_features(params[:-2], x, batch_norm), params[-2], params[-1])


@dataclass(frozen=True)
class ConvNet:
    """How the paper's 4-block CNN is built. The defaults are ours; OFFICIAL_CNN below
    is the network of the paper's code (cbfinn/maml), which differs in five ways."""
    max_pool: bool = False              # stride-1 convolutions then 2x2 max-pooling, not stride-2 convolutions
    batch_norm_scale: bool = True       # batch norm scales (gamma) as well as shifts (beta)
    inner_loop_batch_norm: bool = True  # the inner loop adapts batch norm's parameters (else only meta-learned)
    conv_bias: bool = False             # a bias on each convolution (batch norm's mean subtraction cancels it)
    init: str = "pytorch"               # pytorch: U(+-1/sqrt(fan_in)) (nn.Conv2d's, nn.Linear's); official:
                                        # Xavier-uniform convolutions, N(0, 1) output weights, zero biases
    tf_same_padding: bool = False       # TensorFlow's "SAME" padding: the odd pixel of padding at the bottom/right
    batch_norm_eps: float = BATCH_NORM_EPS

    def per_block(self):
        return 2 + self.conv_bias + self.batch_norm_scale

    def inner_loop_mask(self, n_params):
        """Which of the network's parameters the inner loop adapts (a tuple of bools)."""
        block = (True,) * (1 + self.conv_bias) + (self.inner_loop_batch_norm,) * (1 + self.batch_norm_scale)
        return block * ((n_params - 2) // self.per_block()) + (True, True)


CNN = ConvNet()
# cbfinn/maml's Omniglot network (maml.py construct_conv_weights and forward_conv, utils.py
# conv_block and normalize): tf.contrib.layers.batch_norm with its defaults (an offset, no
# scale, epsilon 1e-3), whose offset is not among the weights the inner loop adapts.
OFFICIAL_CNN = ConvNet(batch_norm_scale=False, inner_loop_batch_norm=False, conv_bias=True, init="official",
                       tf_same_padding=True, batch_norm_eps=1e-3)
# The CNNs omniglot_maml.py offers by name (--model): ours, the official code's, and for the
# ablation of docs/official_network.md the official network with one part as ours, or ours
# with one part as the official network's.
CONV_NETS = {
    "cnn": CNN,
    "official-cnn": OFFICIAL_CNN,
    "maxpool": replace(CNN, max_pool=True),
    "official-cnn+pytorch-init": replace(OFFICIAL_CNN, init="pytorch"),
    "official-cnn+bn-scale": replace(OFFICIAL_CNN, batch_norm_scale=True),
    "official-cnn+inner-loop-bn": replace(OFFICIAL_CNN, inner_loop_batch_norm=True),
    "cnn+meta-only-bn": replace(CNN, inner_loop_batch_norm=False),
    "cnn+official-init": replace(CNN, init="official"),
}


def init_cnn(n_classes, in_channels=1, filters=64, blocks=4, generator=None, dtype=torch.float32, net=CNN):
    """Parameters of the paper's CNN: `blocks` x (3x3 conv, batch norm, ReLU), then
    linear; per block [weight, bias if net.conv_bias, gamma if net.batch_norm_scale, beta]."""
    params = []
    channels = in_channels
    for _ in range(blocks):
        shape = (filters, channels, 3, 3)
        if net.init == "official":  # tf.contrib.layers.xavier_initializer_conv2d: U(+-sqrt(6 / (fan_in + fan_out)))
            bound = math.sqrt(6 / (9 * channels + 9 * filters))
            params.append((2 * torch.rand(shape, generator=generator, dtype=dtype) - 1) * bound)
        else:
            params.append(_uniform(shape, 9 * channels, generator, dtype))
        if net.conv_bias:
            params.append(torch.zeros(filters, dtype=dtype) if net.init == "official"
                          else _uniform((filters,), 9 * channels, generator, dtype))
        if net.batch_norm_scale:
            params.append(torch.ones(filters, dtype=dtype))
        params.append(torch.zeros(filters, dtype=dtype))
        channels = filters
    if net.init == "official":  # tf.random_normal output weights, zero bias
        params.append(torch.randn((n_classes, channels), generator=generator, dtype=dtype))
        params.append(torch.zeros(n_classes, dtype=dtype))
    else:
        params.append(_uniform((n_classes, channels), channels, generator, dtype))
        params.append(_uniform((n_classes,), channels, generator, dtype))
    return params


def tf_same_pad(x, stride, kernel=3):
    """Pad images x as TensorFlow's "SAME" padding does: the output has ceil(size / stride)
    pixels a side, and an odd pixel of padding goes to the bottom and the right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def cnn_features(body, x, net=CNN, statistics=None, collected=None):
    """init_cnn's network without its output layer (body: its other parameters): the
    embedding of images x of shape (batch, channels, H, W), one vector per image.
    statistics and collected: batch norm's, as in normalized_layer.

    Each block halves the resolution: a stride-2 convolution (the paper's
    Omniglot network) or, with net.max_pool, a stride-1 convolution then 2x2 max-pool.
    The last feature map is averaged over space.
    """
    per_block = net.per_block()
    stride = 1 if net.max_pool else 2
    for i in range(len(body) // per_block):
        block = body[per_block * i:per_block * (i + 1)]
        weight, bias, beta = block[0], block[1] if net.conv_bias else None, block[-1]
        gamma = block[-2] if net.batch_norm_scale else None
        if net.tf_same_padding:
            x = F.conv2d(tf_same_pad(x, stride), weight, bias, stride=stride)
        else:
            x = F.conv2d(x, weight, bias, stride=stride, padding=1)
        x = torch.relu(normalized_layer(x, gamma, beta, (0, 2, 3), net.batch_norm_eps, i, statistics, collected))
        if net.max_pool:
            x = F.max_pool2d(x, 2)
    return x.mean(dim=(2, 3))


def batch_norm_channels(body):
    """The channels of each batch-norm layer of the body of init_mlp's (with batch norm)
    or init_cnn's network: each follows a weight matrix or kernel, whose first dimension
    they are."""
    return [p.shape[0] for p in body if p.dim() > 1]


def cnn(params, x, net=CNN):
    """Forward pass of init_cnn's network: cnn_features, then the linear classifier."""
    return F.linear(cnn_features(params[:-2], x, net), params[-2], params[-1])


# ---- A Conditional Neural Process (Garnelo et al. 2018) --------------------------------
CNP_LAYERS = 3  # linear layers of its encoder, and of its decoder


def init_cnp(n_features, y_size, n_outputs, hidden=128, generator=None, dtype=torch.float32):
    """Parameters of cnp: the encoder's MLP [n_features + y_size, hidden x CNP_LAYERS], then
    the decoder's [n_features + hidden, hidden x (CNP_LAYERS - 1), n_outputs]."""
    encoder = init_mlp([n_features + y_size] + [hidden] * CNP_LAYERS, generator=generator, dtype=dtype)
    decoder = init_mlp([n_features + hidden] + [hidden] * (CNP_LAYERS - 1) + [n_outputs], generator=generator,
                       dtype=dtype)
    return encoder + decoder


def cnp(params, support_features, support_y, query_features, groups=None):
    """A Conditional Neural Process reads a task's support set and predicts its query set
    in one pass, without gradient steps. The encoder maps each support example (its
    features, and its y as a vector) to a representation; their mean over each group r_g
    summarises the group, so the order of the support set does not matter; the decoder
    maps (features of a query x, r_g) to an output for each group.
    Shapes: support_features (S, F), support_y (S, Y), query_features (Q, F); groups (G, S),
    1 where the support example is in the group, else 0 (None: one group of all of them).
    Returns (Q, G, outputs)."""
    encoder, decoder = params[:2 * CNP_LAYERS], params[2 * CNP_LAYERS:]
    encoded = mlp(encoder, torch.cat([support_features, support_y], dim=-1))
    if groups is None:
        groups = torch.ones(1, len(encoded), dtype=encoded.dtype, device=encoded.device)
    r = groups @ encoded / groups.sum(dim=1, keepdim=True)
    n_query, n_groups = len(query_features), len(r)
    return mlp(decoder, torch.cat([query_features[:, None].expand(-1, n_groups, -1),
                                   r[None].expand(n_query, -1, -1)], dim=-1))
