"""The catalogue entries that ``torch.optim`` implements; gd, sgd and minibatch differ only in how
the training loop batches data (``batch_mode``)."""

from __future__ import annotations

import torch

from workers.optimizers._base import OPTIMIZERS, WEIGHT_DECAY, HParam, OptimizerEntry

BETAS = HParam(
    (0.9, 0.999), "decay rates of the first and second moment estimates", tuple, 0.0, 0.9999
)
EPS = HParam(1e-8, "term added to the denominator for numerical stability", float, low=0.0)
MOMENTUM = HParam(0.9, "momentum factor (heavy ball)", float, 0.0, 1.0)
DAMPENING = HParam(0.0, "dampening for momentum", float, 0.0, 1.0)


def _sgd(params, lr, weight_decay, momentum=0.0, nesterov=False, dampening=0.0):
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        dampening=dampening,
    )


def _plain(params, lr, weight_decay):
    return _sgd(params, lr, weight_decay)


def _momentum(params, lr, weight_decay, momentum, dampening):
    return _sgd(params, lr, weight_decay, momentum=momentum, dampening=dampening)


def _nag(params, lr, weight_decay, momentum):
    return _sgd(params, lr, weight_decay, momentum=momentum, nesterov=True)


for _name, _mode, _doc in (
    ("gd", "full", "full-batch gradient descent: one step per epoch on the whole training set"),
    (
        "sgd",
        "single",
        "stochastic gradient descent: batch size 1 unless training.batch_size is set",
    ),
    ("minibatch", "minibatch", "mini-batch gradient descent (training.batch_size, default 64)"),
):
    OPTIMIZERS.add(
        _name,
        OptimizerEntry(
            _name,
            _doc,
            _plain,
            {"weight_decay": WEIGHT_DECAY},
            lr_default=0.5 if _mode == "full" else 0.01,
            batch_mode=_mode,  # type: ignore[arg-type]
        ),
    )

OPTIMIZERS.add(
    "momentum",
    OptimizerEntry(
        "momentum",
        "SGD with heavy-ball momentum",
        _momentum,
        {"momentum": MOMENTUM, "dampening": DAMPENING, "weight_decay": WEIGHT_DECAY},
    ),
)
OPTIMIZERS.add(
    "nag",
    OptimizerEntry(
        "nag",
        "Nesterov accelerated gradient",
        _nag,
        {"momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
    ),
)
OPTIMIZERS.add(
    "rmsprop",
    OptimizerEntry(
        "rmsprop",
        "RMSProp: divides by a running RMS of gradients",
        lambda params, lr, **kw: torch.optim.RMSprop(params, lr=lr, **kw),
        {
            "alpha": HParam(
                0.99, "smoothing constant of the squared-gradient average", float, 0.0, 1.0
            ),
            "eps": EPS,
            "momentum": HParam(0.0, "momentum factor", float, 0.0, 1.0),
            "centered": HParam(False, "normalise by the gradient's estimated variance", bool),
            "weight_decay": WEIGHT_DECAY,
        },
        lr_default=0.001,
    ),
)
OPTIMIZERS.add(
    "adam",
    OptimizerEntry(
        "adam",
        "Adam: bias-corrected first and second moment estimates",
        lambda params, lr, **kw: torch.optim.Adam(params, lr=lr, **kw),
        {
            "betas": BETAS,
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "amsgrad": HParam(False, "use the AMSGrad variant", bool),
        },
        lr_default=0.001,
    ),
)
OPTIMIZERS.add(
    "adamax",
    OptimizerEntry(
        "adamax",
        "Adamax: Adam with the infinity norm",
        lambda params, lr, **kw: torch.optim.Adamax(params, lr=lr, **kw),
        {"betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY},
        lr_default=0.002,
    ),
)
OPTIMIZERS.add(
    "adagrad",
    OptimizerEntry(
        "adagrad",
        "Adagrad: per-coordinate steps shrinking with accumulated squared gradients",
        lambda params, lr, **kw: torch.optim.Adagrad(params, lr=lr, **kw),
        {
            "lr_decay": HParam(0.0, "learning-rate decay", float, low=0.0),
            "initial_accumulator_value": HParam(0.0, "starting accumulator", float, low=0.0),
            "eps": HParam(1e-10, "term added to the denominator", float, low=0.0),
            "weight_decay": WEIGHT_DECAY,
        },
    ),
)
OPTIMIZERS.add(
    "adadelta",
    OptimizerEntry(
        "adadelta",
        "Adadelta: step sizes from running averages of updates and gradients",
        lambda params, lr, **kw: torch.optim.Adadelta(params, lr=lr, **kw),
        {
            "rho": HParam(0.9, "decay of the running averages", float, 0.0, 1.0),
            "eps": HParam(1e-6, "term added to the denominator", float, low=0.0),
            "weight_decay": WEIGHT_DECAY,
        },
        lr_default=1.0,
    ),
)
