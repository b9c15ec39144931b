"""φ(k, k) between every pair of many adapters on one base, batched; an order that keeps similar adapters together.

Per module m the adapter i has A_i: [r_i, k]; V_i: [k, r_i] are its right-singular vectors, strongest first. The
pair-by-pair definition (report.similarity_grid) is

    φ_m(i, j) = ‖V_i[:, :q]ᵀ V_j[:, :q]‖_F² / q,  q = min(r_i, r_j)

and the map is its mean over the modules both adapters adapt. Here every adapter's V is computed once (one SVD of
A per adapter and module, never one per pair), the bases of one module are stacked zero-padded to [n, r_max, k],
and a block of rows of the Gram matrix of all bases, [b·r_max, n·r_max], is one matmul; squaring it and summing
each pair's top-left q × q block gives φ_m for b × n pairs at once.

Memory is bounded: modules are taken in chunks whose stacked bases fit `budget_bytes` (n · r_max · k · 8 bytes per
module, float64; a module larger than the budget makes a chunk of its own), one chunk alive at a time, and a Gram
block never exceeds `block_bytes` (squared and masked in place). Peak ≈ max(budget_bytes, one module's bases) +
block_bytes + the [N, N] results (64 MiB + 32 MiB by default) plus the allocator's slack: it does not grow with the
number of modules, and with the number of adapters N only through one module's bases, N · r_max · k · 8 bytes
(N = 200, k = 4096, r = 16: 100 MiB).

Each adapter's safetensors header is read once; per chunk each file is opened once and only its lora_A tensors of
that chunk are read (positional reads), so every byte of every A is read exactly once and no B is read at all.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AdapterMismatchError, LoraError
from ..model_files import open_regular
from ..peft_format import CONFIG_FILE, WEIGHTS_FILE, a_factor, read_peft_config
from ..safetensors_io import TensorEntry, read_header, read_tensor

BUDGET_BYTES = 64 * 2**20  # stacked bases of one chunk of modules
BLOCK_BYTES = 32 * 2**20  # one block of rows of a module's Gram matrix


@dataclass(frozen=True)
class PairwiseSimilarity:
    """phi[i, j]: mean φ(k, k) over the modules adapters i and j share (NaN where they share none; 1 on the
    diagonal); shared[i, j]: how many modules that mean is over. Rows in the order the folders were given."""

    phi: torch.Tensor  # [N, N] float64
    shared: torch.Tensor  # [N, N] int64


@dataclass(frozen=True)
class _Factor:
    """Where one adapter's lora_A of one module lies."""

    adapter: int
    entry: TensorEntry


def pairwise_similarity(
    folders: Sequence[str | Path], budget_bytes: int = BUDGET_BYTES, block_bytes: int = BLOCK_BYTES
) -> PairwiseSimilarity:
    """Mean φ(k, k) between every pair of the PEFT adapter folders `folders` (see the module docstring)."""
    files, modules = _index(folders)
    n = len(files)
    total = torch.zeros(n, n, dtype=torch.float64)
    shared = torch.zeros(n, n, dtype=torch.int64)
    for chunk in _chunks(modules, budget_bytes):
        _add_chunk(files, chunk, total, shared, block_bytes)
    phi = torch.where(shared > 0, total / shared.clamp(min=1), torch.nan)
    return PairwiseSimilarity(phi.fill_diagonal_(1.0), shared)


def _add_chunk(
    files: list[Path], chunk: dict[str, list[_Factor]], total: torch.Tensor, shared: torch.Tensor, block_bytes: int
) -> None:
    """Add φ of every module of the chunk to `total` and count it in `shared` (one chunk's bases alive at a time)."""
    for idx, bases, ranks in _read_bases(files, chunk):
        phi = _module_phi(bases, ranks, block_bytes)
        if len(idx) == len(total):  # every adapter adapts this module: in order, no scatter
            total += phi
            shared += 1
        else:
            total[idx[:, None], idx[None, :]] += phi
            shared[idx[:, None], idx[None, :]] += 1


def _index(folders: Sequence[str | Path]) -> tuple[list[Path], dict[str, list[_Factor]]]:
    """The weights file of each folder and, per module path, where each adapter's lora_A lies (headers only)."""
    files: list[Path] = []
    modules: dict[str, list[_Factor]] = {}
    for i, folder in enumerate(map(Path, folders)):
        read_peft_config(folder).lora_config(folder / CONFIG_FILE)  # a LoRA adapter, or a clear error
        file = folder / WEIGHTS_FILE
        if not os.path.lexists(file):
            raise LoraError(f"{folder} has no {WEIGHTS_FILE}; point at the folder save_adapter() wrote")
        entries, _ = read_header(file)
        found = {f[0]: e for name, e in entries.items() if (f := a_factor(name)) and len(e.shape) == 2}
        if not found:
            raise LoraError(f"{folder}: no lora_A weights; point at a LoRA adapter folder")
        for module, entry in found.items():
            modules.setdefault(module, []).append(_Factor(i, entry))
        files.append(file)
    for module, factors in modules.items():
        widths = {f.entry.shape[1] for f in factors}
        if len(widths) > 1:
            raise AdapterMismatchError(
                f"{module}: lora_A acts on inputs of different widths {sorted(widths)} across the adapters; "
                "compare adapters of the same base model"
            )
    return files, dict(sorted(modules.items()))


def _stacked_bytes(factors: list[_Factor]) -> int:
    rank = max(min(f.entry.shape) for f in factors)
    return len(factors) * factors[0].entry.shape[1] * rank * 8


def _chunks(modules: dict[str, list[_Factor]], budget_bytes: int) -> list[dict[str, list[_Factor]]]:
    """Consecutive modules grouped so that each group's stacked bases fit the budget."""
    chunks: list[dict[str, list[_Factor]]] = []
    used = budget_bytes + 1
    for module, factors in modules.items():
        size = _stacked_bytes(factors)
        if used + size > budget_bytes:
            chunks.append({})
            used = 0
        chunks[-1][module] = factors
        used += size
    return chunks


def _read_bases(
    files: list[Path], chunk: dict[str, list[_Factor]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per module of the chunk: (adapter indices [n], bases [n, r_max, k]: rows Vᵀ, zero-padded, ranks [n]).

    Files are visited in order, each opened once for the whole chunk."""
    stacks = {}
    for module, factors in chunk.items():
        rank = max(min(f.entry.shape) for f in factors)
        bases = torch.zeros(len(factors), rank, factors[0].entry.shape[1], dtype=torch.float64)
        stacks[module] = (
            torch.tensor([f.adapter for f in factors]),
            bases,
            torch.zeros(len(factors), dtype=torch.long),
        )
    by_file: dict[int, list[tuple[str, int, TensorEntry]]] = {}
    for module, factors in chunk.items():
        for slot, f in enumerate(factors):
            by_file.setdefault(f.adapter, []).append((module, slot, f.entry))
    for adapter, wanted in sorted(by_file.items()):
        with open_regular(files[adapter]) as file:
            for module, slot, entry in sorted(wanted, key=lambda w: w[2].start):
                vt = torch.linalg.svd(read_tensor(file, entry).double(), full_matrices=False)[2]  # [q, k]
                _, bases, ranks = stacks[module]
                bases[slot, : len(vt)] = vt
                ranks[slot] = len(vt)
    return list(stacks.values())


def _module_phi(bases: torch.Tensor, ranks: torch.Tensor, block_bytes: int) -> torch.Tensor:
    """φ(k, k) of every pair of one module's adapters: bases [n, r, k] (zero past ranks [n]) -> [n, n]."""
    n, r, _ = bases.shape
    flat = bases.reshape(n * r, -1)  # row i·r + a: direction a of adapter i (a view, no copy)
    step = max(1, block_bytes // (r * n * r * 8))
    position = torch.arange(r)
    out = torch.empty(n, n, dtype=torch.float64)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        b = rows.stop - start
        overlap = (flat[start * r : rows.stop * r] @ flat.T).reshape(b, r, n, r).square_()
        q = torch.minimum(ranks[rows, None], ranks[None, :])  # [b, n]: the directions each pair compares
        if bool((q < r).any()):  # a pair of unequal ranks compares only the top q directions of the larger one
            limit = q[:, None, :, None]
            overlap.masked_fill_((position[None, :, None, None] >= limit) | (position[None, None, None, :] >= limit), 0)
        out[rows] = overlap.sum(dim=(1, 3)) / q
    return out


def cluster_order(phi: torch.Tensor) -> list[int]:
    """An order of the adapters in which similar ones sit together: average-linkage agglomerative clustering on
    1 − φ (NaN counts as φ = 0), each merge joining the two clusters' orders at their most similar ends.

    Every cluster the linkage forms is contiguous in the order, so a group of mutually similar adapters reads as
    one block of the map. O(N³) in pure torch: about a second at N = 1000.
    """
    n = phi.shape[0]
    sim = torch.nan_to_num(phi.double(), nan=0.0).clone()
    linkage = sim.clone().fill_diagonal_(-torch.inf)
    sizes = torch.ones(n, dtype=torch.float64)
    orders: list[list[int] | None] = [[i] for i in range(n)]
    for _ in range(n - 1):
        flat = int(torch.argmax(linkage))
        i, j = sorted(divmod(flat, n))
        left, right = orders[i], orders[j]
        assert left is not None and right is not None
        orders[i], orders[j] = _join(left, right, sim), None
        merged = (sizes[i] * linkage[i] + sizes[j] * linkage[j]) / (sizes[i] + sizes[j])
        linkage[i], linkage[:, i] = merged, merged
        linkage[i, i] = -torch.inf
        linkage[j], linkage[:, j] = -torch.inf, -torch.inf
        sizes[i] += sizes[j]
    return next(order for order in orders if order is not None)


def _join(left: list[int], right: list[int], sim: torch.Tensor) -> list[int]:
    """left + right with either flipped so that the two adapters meeting at the seam are the most similar."""
    ends = {
        (False, False): sim[left[-1], right[0]],
        (True, False): sim[left[0], right[0]],
        (False, True): sim[left[-1], right[-1]],
        (True, True): sim[left[0], right[-1]],
    }
    flip_left, flip_right = max(ends, key=lambda k: float(ends[k]))
    return (left[::-1] if flip_left else left) + (right[::-1] if flip_right else right)


def nearest(phi: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per adapter, its k most similar other adapters with φ, most similar first (pairs with no shared module,
    NaN, are left out)."""
    sim = phi.double().clone().fill_diagonal_(torch.nan)
    ranked = torch.nan_to_num(sim, nan=-torch.inf).argsort(dim=1, descending=True)[:, :k]
    return [
        [(int(j), float(sim[i, j])) for j in row if not torch.isnan(sim[i, j])] for i, row in enumerate(ranked.tolist())
    ]
