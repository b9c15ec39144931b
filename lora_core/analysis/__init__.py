"""How much rank does an adapter use? SVD spectra, PVE, elbow, subspace similarity, amplification,
compression to a lower rank and extraction from a full fine-tune. Plots live in `.plots`."""

from .adapter import AdaptedModule, Adapter, BaseWeights, read_adapter
from .report import (
    AdapterReport,
    ModuleSpectrum,
    RankCounts,
    adapter_report,
    amplification_factor,
    similarity_grid,
    subspace_similarity,
)
from .spectrum import Spectrum, dense_spectrum, spectrum
from .transform import Reduced, compress, extract

__all__ = [
    "AdaptedModule",
    "Adapter",
    "AdapterReport",
    "BaseWeights",
    "ModuleSpectrum",
    "RankCounts",
    "Reduced",
    "Spectrum",
    "adapter_report",
    "amplification_factor",
    "compress",
    "dense_spectrum",
    "extract",
    "read_adapter",
    "similarity_grid",
    "spectrum",
    "subspace_similarity",
]
