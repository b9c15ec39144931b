"""The task map at a few hundred tasks: `python -m bench.task_map IMPL LIST OUT` in a fresh process.

IMPL `ours`: lora_core.analysis.pairwise (each adapter's A read once, one SVD per adapter and module, batched Gram
blocks) plus the clustered order. IMPL `pairs`: the loop `adapters map` ran before, as a user of lora_core's public
API would write it: every adapter read whole (read_adapter), then subspace_similarity for every pair (two SVDs per
module per pair). LIST: a file of adapter folders, one a line. Writes phi (and the order) to OUT with torch.save and
prints {seconds, peak, baseline}: peak resident memory above the process's own after its imports (VmHWM reset).
"""

import json
import sys
import time
from pathlib import Path

import torch

from bench.harness import peak_rss

torch.set_num_threads(2)


def resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def pairs(folders: list[str]) -> torch.Tensor:
    from lora_core.analysis import read_adapter, subspace_similarity

    loaded = [read_adapter(folder) for folder in folders]
    n = len(folders)
    phi = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            grids = subspace_similarity(loaded[i], loaded[j])
            phi[i, j] = phi[j, i] = sum(float(g[min(g.shape) - 1, min(g.shape) - 1]) for g in grids.values()) / len(
                grids
            )
    return phi


def main() -> None:
    impl, listing, out = sys.argv[1:]
    folders = Path(listing).read_text().split()
    from lora_core.analysis import pairwise  # imported before the baseline, like the anchor's modules

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on is the work's
    baseline = resident()
    started = time.perf_counter()
    if impl == "ours":
        phi = pairwise.pairwise_similarity(folders).phi
        order = pairwise.cluster_order(phi)
    else:
        phi, order = pairs(folders), []
    seconds = time.perf_counter() - started
    torch.save({"phi": phi, "order": order}, out)
    print(json.dumps({"seconds": seconds, "peak": max(peak_rss() - baseline, 0), "baseline": baseline}))


if __name__ == "__main__":
    main()
