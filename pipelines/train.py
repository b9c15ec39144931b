"""The training loop for a model whose trainable parameters are its adapter (and saved modules).

With a validation split it evaluates every N steps and ends holding the weights `training.selection` keeps (the
ones saved and registered; pipelines/selection.py): the best pass, the best of a smoothed curve, or the average of
the late passes; with `patience` it stops early when that many passes bring nothing better.

Resumable: every `checkpoint_every` optimizer steps it writes the trainable weights, AdamW's
moments, the schedule position, the data position and the RNG states (safetensors + JSON, never
pickle), so a killed run continues to the same adapter. Under torchrun (DDP) each rank takes
every world-th batch and rank 0 alone writes.
"""

import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, field_validator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from . import interrupts
from .cpu_dropout import cpu_dropout
from .device import autocast, resolve_device
from .errors import TrainingDiverged, TrainingError
from .results import Metrics, ValidationPass
from .selection import Kept, Validation

STATE_FILE = "state.json"


def warmup_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """lr multiplier: linear 0 → 1 over warmup, then linear 1 → 0 at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Trained:
    losses: list[float]
    evaluations: list[ValidationPass] = field(default_factory=list)  # one per validation pass
    best_step: int | None = None  # the step whose weights the model holds at the end (None: the last or an average)
    stopped_early: bool = False
    averaged_steps: list[int] = field(default_factory=list)  # selection average: the passes whose mean it holds
    averaged: Metrics | None = None  # selection average: the validation metrics of that mean


class Position(BaseModel):
    """Where a checkpointed run stands (state.json): the epoch and the batches of it already trained on, the losses
    and validation passes so far, the kept pass, the averaged passes' steps and the schedule's step."""

    epoch: int = 0
    batch: int = 0
    losses: list[float] = []
    evaluations: list[ValidationPass] = []
    best_step: int | None = None
    averaged_steps: list[int] = []
    schedule_step: int = 0

    @field_validator("evaluations", mode="before")
    @classmethod
    def _flat(cls, passes: list) -> list:
        """Checkpoints before 2026-12 stored a pass as {step, <metric>: value, ...}."""
        return [
            {"step": p["step"], "metrics": {k: v for k, v in p.items() if k != "step"}}
            if isinstance(p, dict) and "metrics" not in p
            else p
            for p in passes
        ]


def param_groups(named: dict[str, nn.Parameter], lr: float, lr_ratio: float) -> list[dict]:
    """LoRA+ (Hayou et al. 2024): B learns lr_ratio times faster than A (and the saved modules)."""
    b = [p for n, p in named.items() if ".lora_B." in n]
    rest = [p for n, p in named.items() if ".lora_B." not in n]
    return [g for g in ({"params": rest, "lr": lr}, {"params": b, "lr": lr * lr_ratio}) if g["params"]]


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs


def adamw(named: dict[str, nn.Parameter], lr: float, lr_ratio: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `named`, fused (one kernel over every tensor, as HF Trainer's default adamw_torch_fused) where torch
    has that kernel: the adapter is some 70 small tensors, and the unfused update cost 4.6 ms of a 100 ms MiniLM step
    (fused 1.7 ms). The same update, rounded differently."""
    fused = all(p.device.type in FUSED_DEVICES for p in named.values())  # trainable: floating point already
    return torch.optim.AdamW(param_groups(named, lr, lr_ratio), lr=lr, weight_decay=weight_decay, fused=fused or None)


def train(
    model: nn.Module,
    make_batches: Callable[[int], Iterable[dict]],
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.1,
    device: str = "auto",
    bf16: bool = True,
    grad_accumulation: int = 1,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    on_step: Callable[[int, float, float], None] | None = None,
    lr_ratio: float = 1.0,
    validation: Validation | None = None,
) -> Trained:
    """AdamW over the trainable parameters for up to `steps` optimizer steps.

    make_batches(epoch) yields batches with a `labels` entry; epochs roll over until `steps`.
    With checkpoint_dir, training resumes from the checkpoint found there. With `validation`, the model ends
    holding the weights its `selection` keeps, and training stops early when patience runs out.
    """
    dev = resolve_device(device)
    model.to(dev).train()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise TrainingError("the model has no trainable parameters; inject an adapter first")
    rank, size = world()
    runner = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    optimizer = adamw(named, lr, lr_ratio, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear_decay(max(1, math.ceil(warmup_fraction * steps)), steps)
    )
    position, kept = Position(), Kept()
    if checkpoint_dir and (checkpoint_dir / STATE_FILE).exists():
        position, kept = load_checkpoint(checkpoint_dir, named, optimizer, schedule)
    done = Trained(position.losses, position.evaluations, position.best_step)
    losses = done.losses
    epoch, skip, accumulated, micro = position.epoch, position.batch, 0.0, 0
    # A bar on a terminal only (disable=None); logs and Prefect get on_step instead.
    bar = tqdm(total=steps, initial=len(losses), desc="train", unit="step", disable=None if rank == 0 else True)
    with cpu_dropout(model, dev):
        while len(losses) < steps and not done.stopped_early:
            for index, batch in enumerate(make_batches(epoch)):
                if index < skip or index % size != rank:
                    continue  # already trained on before the checkpoint, or another rank's share
                interrupts.check()  # a Ctrl-C that garbage collection dropped stops the run here
                with autocast(dev, bf16, training=True):
                    loss = runner(**{k: v.to(dev) for k, v in batch.items()}).loss / grad_accumulation
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"training diverged at step {len(losses) + 1} (loss {value}); lower training.lr or check the data"
                    )
                loss.backward()
                accumulated += value
                micro += 1
                if micro < grad_accumulation:
                    continue
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(accumulated)
                accumulated, micro = 0.0, 0
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                if on_step and rank == 0:
                    on_step(len(losses), losses[-1], float(schedule.get_last_lr()[0]))
                if validation and (len(losses) % validation.every == 0 or len(losses) == steps):
                    validate(model, validation, named, done, kept, steps)
                if checkpoint_dir and len(losses) % checkpoint_every == 0 and len(losses) < steps and rank == 0:
                    at = Position(
                        epoch=epoch,
                        batch=index + 1,
                        losses=losses,
                        evaluations=done.evaluations,
                        best_step=done.best_step,
                        averaged_steps=kept.averaged_steps,
                        schedule_step=schedule.last_epoch,
                    )
                    save_checkpoint(checkpoint_dir, named, optimizer, at, kept)
                if len(losses) == steps or done.stopped_early:
                    break
            epoch += 1
            skip = 0
    bar.close()
    held = kept.weights()
    if held is not None:
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(held[name])
    model.eval()
    done.averaged_steps = kept.averaged_steps
    if validation and validation.run and kept.averaged_steps:
        done.averaged = validation.run()  # what is kept is no pass made: measure it once
    return done


def validate(
    model: nn.Module, validation: Validation, named: dict[str, nn.Parameter], done: Trained, kept: Kept, steps: int
) -> None:
    """One validation pass (every rank runs it on the whole split, so all agree on stopping); updates `kept` as
    `validation.selection` says: the pass best on the metric or on its smoothed curve, or the passes after half of
    the `steps` added to the average."""
    step = len(done.losses)
    if validation.run is None:  # no split to measure: an average's weights at the pass points, unmeasured
        if step > steps / 2:
            kept.add(named, step)
        return
    model.eval()
    metrics = validation.run()
    model.train()
    done.evaluations.append(ValidationPass(step=step, metrics=metrics))
    if validation.on_result and world()[0] == 0:
        validation.on_result(step, metrics)
    if validation.selection == "average":
        if step > steps / 2:
            kept.add(named, step)
        return
    now = validation.standing(done.evaluations, len(done.evaluations) - 1)
    at = next((i for i, e in enumerate(done.evaluations) if e.step == done.best_step), None)
    if now is not None and validation.better(now, None if at is None else validation.standing(done.evaluations, at)):
        done.best_step = step
        kept.keep(named)
    elif done.best_step is not None:
        stale = sum(1 for e in done.evaluations if e.step > done.best_step)
        done.stopped_early = validation.patience is not None and stale >= validation.patience


def save_checkpoint(
    folder: Path, named: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, position: Position, kept: Kept
) -> None:
    """Write to a sibling folder, then swap it in: a kill mid-write leaves the previous checkpoint intact."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in named.items()}, tmp / "weights.safetensors")
    if kept.best is not None:
        save_file({n: t.contiguous() for n, t in kept.best.items()}, tmp / "best.safetensors")
    if kept.total is not None:  # the running sum of the averaged passes; their steps are in the position
        save_file({n: t.contiguous() for n, t in kept.total.items()}, tmp / "average.safetensors")
    moments = {}
    for name, param in named.items():
        for key, value in optimizer.state.get(param, {}).items():
            moments[f"{name}::{key}"] = value.detach().cpu().reshape(value.shape).contiguous()
    save_file(moments, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, tmp / "rng.safetensors")
    (tmp / STATE_FILE).write_text(position.model_dump_json())
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    folder: Path, named: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, schedule
) -> tuple[Position, Kept]:
    """(position, weights kept so far) of a checkpoint; the parameters, AdamW moments, schedule and RNG restored."""
    state = Position.model_validate_json((folder / STATE_FILE).read_text())
    weights = load_file(folder / "weights.safetensors")
    if set(weights) != set(named):
        raise TrainingError(f"checkpoint {folder} holds other parameters than this model; delete it to start over")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(weights[name])
    moments = load_file(folder / "optimizer.safetensors")
    for name, param in named.items():
        entries = {key.split("::", 1)[1]: value for key, value in moments.items() if key.startswith(name + "::")}
        if entries:
            optimizer.state[param] = {k: v.to(param.device) for k, v in entries.items()}
    with warnings.catch_warnings():  # replaying the schedule without optimizer steps is intended here
        warnings.simplefilter("ignore")
        for _ in range(state.schedule_step):
            schedule.step()
    rng = load_file(folder / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    kept = Kept(averaged_steps=state.averaged_steps)
    if (folder / "best.safetensors").exists():
        kept.best = load_file(folder / "best.safetensors")
    if (folder / "average.safetensors").exists():
        kept.total = load_file(folder / "average.safetensors")
    return state, kept
