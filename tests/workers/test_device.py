"""The device picker: the pure decision, then the real thing inside Ray tasks on fake accelerators.

Ray lets a node advertise GPUs and TPUs it does not have (``num_gpus=1``, ``resources={"TPU": 1}``);
Ray then assigns them and sets ``CUDA_VISIBLE_DEVICES``/``TPU_VISIBLE_CHIPS`` for real. This
machine's torch is the CPU build and has no torch_xla, so each picker must fall back to the CPU
and say why.
"""

from __future__ import annotations

import pytest
import torch

from workers.device import choose_device, move, pick_device


@pytest.mark.parametrize(
    ("assigned", "cuda", "xla", "kind", "says"),
    [
        ({"CPU": 1.0}, True, True, "cpu", "no accelerator assigned"),
        ({"CPU": 1.0, "GPU": 0.25}, True, False, "cuda", "0.25 GPU"),
        ({"CPU": 1.0, "GPU": 1.0}, False, False, "cpu", "torch.cuda.is_available() is False"),
        ({"CPU": 1.0, "TPU": 4.0}, False, True, "xla", "4 TPU"),
        ({"CPU": 1.0, "TPU": 1.0}, True, False, "cpu", "torch_xla is not importable"),
        ({}, True, True, "cpu", "no accelerator assigned"),  # outside Ray: never grab a GPU
    ],
)
def test_choose_device_follows_the_assignment(assigned, cuda, xla, kind, says):
    got_kind, reason = choose_device(assigned, cuda_available=cuda, xla_available=xla)
    assert got_kind == kind
    assert says in reason


def test_pick_device_without_ray_is_cpu_and_names_the_host():
    import socket

    d = pick_device(amp=True, assigned={})
    assert d.kind == "cpu" and d.torch_device == torch.device("cpu")
    assert d.label == "cpu"
    assert d.node.startswith(socket.gethostname())
    assert not d.amp and "amp off" in d.reason
    x, y = move(d, torch.ones(2), torch.zeros(2, dtype=torch.long))
    assert x.device.type == "cpu" and y.dtype == torch.long
    with d.autocast():  # a no-op context on CPU
        assert (x * 2).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pick_device_on_a_real_gpu_uses_it_with_bf16_autocast():
    d = pick_device(amp=True, cudnn_benchmark=True, assigned={"GPU": 1.0})
    assert d.kind == "cuda" and torch.backends.cudnn.benchmark
    model = torch.nn.Linear(4, 2).to(d.torch_device)
    with d.autocast():
        out = model(torch.ones(3, 4, device=d.torch_device))
    assert out.dtype == (torch.bfloat16 if d.amp else torch.float32)


@pytest.fixture(scope="module")
def fake_accelerator_ray():
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        resources={"TPU": 1},
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_fake_gpu_and_tpu_in_ray_fall_back_to_cpu_with_the_reason(fake_accelerator_ray):
    ray = fake_accelerator_ray

    @ray.remote
    def picked():
        import os

        d = pick_device(amp=True)
        return d.kind, d.reason, d.node, d.node_id, os.environ.get("CUDA_VISIBLE_DEVICES")

    kind, reason, node, node_id, cvd = ray.get(picked.options(num_gpus=1).remote())
    assert cvd == "0"  # Ray really assigned the (fake) GPU ...
    assert kind == "cpu" and "assigned 1 GPU" in reason  # ... and the picker fell back, saying so
    assert node_id == ray.get_runtime_context().get_node_id()
    assert "/" in node  # hostname/node name

    kind, reason, *_ = ray.get(picked.options(resources={"TPU": 1}).remote())
    assert kind == "cpu" and "assigned 1 TPU" in reason and "torch_xla" in reason

    kind, reason, *_ = ray.get(picked.remote())
    assert kind == "cpu" and reason.startswith("no accelerator assigned")
