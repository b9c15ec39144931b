"""A Ctrl-C or SIGTERM is raised, recorded, and raised again by training when garbage collection dropped it."""

import os
import signal
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipelines import interrupts
from pipelines.errors import Interrupted
from pipelines.train import train

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def handlers(monkeypatch):
    monkeypatch.setattr(interrupts, "_received", None)
    previous = interrupts.install()
    yield
    interrupts.restore(previous)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=nn.functional.cross_entropy(self.linear(x), labels))


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_raises_interrupted_and_is_recorded(number):
    with pytest.raises(Interrupted) as raised:
        os.kill(os.getpid(), number)
        for _ in range(1000):  # the handler runs at the next bytecode
            pass
    assert raised.value.signal_name == signal.Signals(number).name
    with pytest.raises(Interrupted):
        interrupts.check()


def test_an_interrupt_dropped_by_garbage_collection_stops_training_at_the_next_step(monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: dropped.append(hook.exc_type))

    class Collected:
        def __del__(self) -> None:  # where CPython drops a handler's exception
            interrupts.on_signal(signal.SIGINT, None)

    steps = []

    def on_step(step: int, loss: float, lr: float) -> None:
        steps.append(step)
        if step == 2:
            Collected()  # Ctrl-C during step 2, dropped

    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    with pytest.raises(Interrupted, match="SIGINT"):
        train(Tiny(), lambda epoch: [dict(batch)] * 4, steps=20, lr=1e-2, device="cpu", on_step=on_step)
    assert dropped == [Interrupted] and steps == [1, 2]


def test_restore_gives_back_the_handlers_it_replaced():
    previous = interrupts.install()
    assert signal.getsignal(signal.SIGINT) is interrupts.on_signal
    interrupts.restore(previous)
    assert signal.getsignal(signal.SIGINT) is interrupts.on_signal  # the fixture's, which this one replaced
