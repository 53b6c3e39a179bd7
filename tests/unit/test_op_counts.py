"""op_counts: operations dispatched and host reads, counted without a GPU."""

from __future__ import annotations

import pytest
import torch

from abstraction.op_counts import counting, per_step


def test_each_dispatched_operation_is_counted_once() -> None:
    x = torch.ones(3)
    with counting() as counter:
        y = x * 2 + 1
        torch.mm(y[None], y[:, None])
    counts = counter.result()
    assert counts.by_operation["mul"] == 1 and counts.by_operation["add"] == 1
    assert counts.by_operation["mm"] == 1
    assert counts.host_reads == 0


def test_host_reads_are_the_calls_that_wait_for_a_device() -> None:
    x = torch.tensor([0.0, 1.0, 2.0])
    with counting() as counter:
        x.sum().item()
        bool(x[0])
        float(x[1])
        x.tolist()
        x.cpu()
        x.to("cpu")
        x.to(torch.device("cpu"))  # a device object: taken for the network's device
        x.nonzero()
        x.to(torch.float64)  # a cast on the device: no read
        x + 1
    reads = counter.result().by_host_read
    assert reads == {
        "item": 1,
        "__bool__": 1,
        "__float__": 1,
        "tolist": 1,
        "cpu": 2,
        "nonzero": 1,
    }


@pytest.mark.parametrize("read", [False, True])
def test_per_step_cancels_set_up_and_counts_one_step(read: bool) -> None:
    def loop(steps: int) -> None:
        weight = torch.ones(4, 4, requires_grad=True)
        optimizer = torch.optim.Adam([weight], lr=1e-2)
        float(weight.detach().sum())  # set-up: a read outside the loop
        for _ in range(steps):
            loss = (weight @ weight).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # reads its host-side step count: not a device wait
            if read:
                loss.detach().item()

    step = per_step(loop, 1, 3)
    assert step.host_reads == (1 if read else 0)
    assert step.by_operation["mm"] == 3  # forward, and two in the backward pass
    with counting() as counter:
        loop(1)
    assert counter.result().operations > step.operations  # set-up cancelled


def test_per_step_refuses_no_extra_steps() -> None:
    with pytest.raises(ValueError, match="more >= 1"):
        per_step(lambda n: None, 1, 0)
