"""The device picker: the pure decision, then the real thing inside Ray tasks on fake accelerators.

Ray lets a node advertise GPUs and TPUs it does not have (``num_gpus=1``, ``resources={"TPU": 1}``);
Ray then assigns them and sets ``CUDA_VISIBLE_DEVICES``/``TPU_VISIBLE_CHIPS`` for real. This
machine's torch is the CPU build and has no torch_xla, so each picker must fall back to the CPU
and say why.
"""

from __future__ import annotations

import pytest
import torch

from workers.trial.device import (
    Device,
    choose_device,
    data_fits,
    gpu_share,
    memory_cap,
    move,
    pick_device,
    resident_task,
    task_bytes,
)


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
    model = torch.nn.Linear(2, 2)
    with d.mixed_precision(model):  # a no-op on CPU: the model's own forward stays
        assert "forward" not in vars(model)
        assert model(torch.ones(3, 2)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pick_device_on_a_real_gpu_runs_the_forward_in_bf16_and_returns_float32():
    d = pick_device(amp=True, cudnn_benchmark=True, assigned={"GPU": 1.0})
    assert d.kind == "cuda" and d.amp and torch.backends.cudnn.benchmark
    seen = []
    model = torch.nn.Linear(4, 2).to(d.torch_device)
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with d.mixed_precision(model):
        out = model(torch.ones(3, 4, device=d.torch_device))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert model(torch.ones(3, 4, device=d.torch_device)).dtype == torch.float32  # restored


def _bf16_on_cpu() -> Device:
    # pick_device turns amp on for CUDA only; the mechanism itself is device-neutral, so the CPU
    # build can test it through a Device made by hand.
    return Device(torch.device("cpu"), "cpu", "test", None, "test", amp=True)


def test_mixed_precision_sees_every_weight_update_inside_one_context():
    # autocast caches bf16 weight copies per region: one region around many steps would train
    # against stale weights. Each forward must get a fresh region.
    model = torch.nn.Linear(4, 2)
    x = torch.ones(1, 4)
    with _bf16_on_cpu().mixed_precision(model):
        before = model(x)
        with torch.no_grad():
            model.weight.add_(1.0)
        after = model(x)
    assert before.dtype == torch.float32
    assert torch.allclose(after - before, torch.full_like(before, 4.0), atol=0.1)


def test_bf16_forward_training_learns_as_well_as_float32():
    fp32 = _digits_accuracy(pick_device(assigned={}))
    bf16 = _digits_accuracy(_bf16_on_cpu())
    assert fp32 > 0.9
    assert bf16 > fp32 - 0.03


def _digits_accuracy(d: Device) -> float:
    from workers.models import build_model
    from workers.optimizers import build_optimizer
    from workers.tasks import load_task
    from workers.trial.loop import evaluate, shuffled_batches, train_epoch

    data = load_task("digits", 0)
    torch.manual_seed(0)
    spec = {"arch": "mlp", "hidden": [128, 64], "batch_norm": True}
    model = build_model(spec, data.input_shape, data.num_classes).to(d.torch_device)
    opt = build_optimizer("adam", model.parameters(), {"lr": 0.003})
    x, y = data.x_train.to(d.torch_device), data.y_train.to(d.torch_device)
    gen = torch.Generator().manual_seed(0)
    with d.mixed_precision(model):
        for _ in range(8):
            train_epoch(model, opt, shuffled_batches(x, y, 64, gen))
    return evaluate(model, data.x_val.to(d.torch_device), data.y_val.to(d.torch_device))[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_on_a_real_gpu_learns_as_well_as_float32():
    fp32 = _digits_accuracy(pick_device(amp=False, assigned={"GPU": 1.0}))
    bf16 = _digits_accuracy(pick_device(amp=True, assigned={"GPU": 1.0}))
    print(f"digits val accuracy: fp32 {fp32:.3f}, bf16 forward {bf16:.3f}")
    assert fp32 > 0.9
    assert bf16 > fp32 - 0.03


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


# ----------------------------------------------------------------- packing trials onto one GPU

GIB = 1024**3


@pytest.mark.parametrize(
    ("peak_gib", "card_gib", "share"),
    [
        (0.05, 80, 0.125),  # a small CNN: eight per card, never more (CUDA contexts, time slices)
        (6.0, 80, 0.125),  # 6 * 1.25 + 0.5 = 8 GiB <= 10 GiB
        (7.0, 80, 0.125),  # 9.25 GiB: still within an eighth (10 GiB)
        (7.7, 80, 0.25),  # 10.125 GiB: just past an eighth
        (30.0, 80, 0.5),
        (40.0, 80, 1.0),  # 50.5 GiB: more than half
        (0.05, 16, 0.125),
        (2.5, 16, 0.25),  # 3.625 GiB: past 2 GiB, within 4 GiB
        (3.0, 16, 0.5),  # 4.25 GiB: just past a quarter
    ],
)
def test_gpu_share_is_the_smallest_share_that_holds_a_trial(peak_gib, card_gib, share):
    # Needed: the peak, a quarter more (the margin), and half a GiB of CUDA context.
    got, reason = gpu_share(int(peak_gib * GIB), card_gib * GIB)
    assert got == share
    assert f"{round(1 / share)} trials per GPU" in reason


def test_gpu_share_of_a_trial_larger_than_the_card_is_one_gpu_and_says_so():
    share, reason = gpu_share(100 * GIB, 80 * GIB)
    assert share == 1.0 and "does not fit" in reason


def test_gpu_share_margin_buys_headroom():
    assert gpu_share(int(7.0 * GIB), 80 * GIB, margin=0.0)[0] == 0.125
    assert gpu_share(int(7.0 * GIB), 80 * GIB, margin=0.5)[0] == 0.25


def test_memory_cap_applies_to_a_shared_gpu_only():
    assert memory_cap(0.25) == 0.25 and memory_cap(0.5) == 0.5
    assert memory_cap(1.0) is None and memory_cap(2.0) is None and memory_cap(0.0) is None


def test_label_of_a_shared_gpu_records_the_share():
    def on_cuda(share: float) -> Device:
        return Device(torch.device("cuda", 0), "cuda", "n", None, "r", name="H100", share=share)

    assert on_cuda(0.25).label == "cuda:0 (H100, 0.25 GPU)"
    assert on_cuda(1.0).label == "cuda:0 (H100)"
    assert pick_device(assigned={}).share == 1.0


# ----------------------------------------------------------------- a task's data on the device


def test_data_fits_when_it_takes_at_most_half_the_trials_memory():
    assert data_fits(5 * GIB, 10 * GIB) and not data_fits(5 * GIB + 1, 10 * GIB)
    assert data_fits(9 * GIB, 10 * GIB, fraction=0.9)


def test_task_bytes_counts_every_in_memory_split():
    from tests.workers.plugin_task import streamed, tiny

    data = tiny(0)
    tensors = [data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test]
    assert task_bytes(data) == sum(t.numel() * t.element_size() for t in tensors) > 0
    assert task_bytes(streamed(0)) == 0  # a dataset task is read lazily


def test_resident_task_loads_once_per_task_and_device_and_drops_the_old_copy():
    from tests.workers.plugin_task import tiny

    loads = []

    def load(seed: int):
        def go():
            loads.append(seed)
            return tiny(seed)

        return go

    cpu = pick_device(assigned={})
    first = resident_task(cpu, ("tiny", 0), load(0))
    assert resident_task(cpu, ("tiny", 0), load(0)) is first  # a reused actor's next trial
    assert loads == [0]
    other = resident_task(cpu, ("tiny", 1), load(1))  # another split seed: its own data
    assert other is not first and loads == [0, 1]
    assert resident_task(cpu, ("tiny", 0), load(0)) is not first  # the old copy was dropped
    assert loads == [0, 1, 0]
    assert first.y_train.device == torch.device("cpu")
