"""The singular-value spectrum of a LoRA update ΔW = s·B·A, computed through its factors.

B: [d, r], A: [r, k]. With B = Q_B R_B and Aᵀ = Q_A R_A (thin QR, Q: orthonormal columns),
ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ, so the SVD of the r×r core M = s R_B R_Aᵀ = U_m Σ V_mᵀ gives
ΔW = (Q_B U_m) Σ (Q_A V_m)ᵀ: O((d + k)·r²) work, ΔW (d×k) is never formed.
"""

from dataclasses import dataclass

import torch

from ..errors import LoraError

THRESHOLDS = (0.90, 0.95, 0.99)


@dataclass(frozen=True)
class Spectrum:
    """σ (descending, float64), ΔW's singular vectors U: [d, n], V: [k, n] and derived measures."""

    sigma: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor

    @property
    def energy(self) -> float:
        """‖ΔW‖_F² = Σ σ_i²."""
        return float((self.sigma**2).sum())

    @property
    def frobenius(self) -> float:
        return self.energy**0.5

    @property
    def pve(self) -> torch.Tensor:
        """PVE_i = σ_i² / Σ_j σ_j² (all zeros for ΔW = 0)."""
        return self.sigma**2 / self.energy if self.energy > 0 else torch.zeros_like(self.sigma)

    @property
    def cumulative_pve(self) -> torch.Tensor:
        """PVE_{≤k} = Σ_{i≤k} PVE_i."""
        return torch.cumsum(self.pve, 0)

    def rank_at(self, threshold: float) -> int:
        """Smallest k with cumulative PVE_k ≥ threshold (the rank that keeps that share of ‖ΔW‖²)."""
        check_pve(threshold)
        if self.energy == 0:
            return 0
        reached = self.cumulative_pve >= threshold - 1e-12
        return int(reached.nonzero()[0, 0]) + 1

    @property
    def elbow(self) -> int:
        """Elbow of the cumulative scree curve: the k whose point (k, PVE_{≤k}) lies farthest above
        the chord from (0, 0) to (n, 1). Equivalently, the number of directions whose share of
        ‖ΔW‖² exceeds the average 1/n; the rest carry less than an even spread would.
        A flat spectrum (no bend) gives n."""
        n = len(self.sigma)
        if self.energy == 0 or n == 0:
            return 0
        gap = self.cumulative_pve - torch.arange(1, n + 1, dtype=self.sigma.dtype) / n
        return int(torch.argmax(gap)) + 1 if gap.max() > 1e-9 else n

    @property
    def effective_rank(self) -> float:
        """exp(entropy of p_i = σ_i / Σσ) (Roy & Vetterli 2007): 1 for rank one, n for a flat spectrum."""
        total = float(self.sigma.sum())
        if total == 0:
            return 0.0
        p = self.sigma[self.sigma > 0] / total
        return float(torch.exp(-(p * p.log()).sum()))


def check_pve(p: float) -> None:
    if not 0 < p <= 1:
        raise LoraError(f"pve={p} must lie in (0, 1]: it is the share of ‖ΔW‖² to keep, e.g. 0.95")


def spectrum(lora_b: torch.Tensor, lora_a: torch.Tensor, scale: float = 1.0) -> Spectrum:
    """Spectrum of ΔW = scale·B·A for B: [d, r], A: [r, k], in float64 through the factors."""
    if lora_b.ndim != 2 or lora_a.ndim != 2 or lora_b.shape[1] != lora_a.shape[0]:
        raise LoraError(f"B {tuple(lora_b.shape)} and A {tuple(lora_a.shape)} do not multiply: need B [d, r], A [r, k]")
    q_b, r_b = torch.linalg.qr(lora_b.detach().double())
    q_a, r_a = torch.linalg.qr(lora_a.detach().double().T)
    u_m, sigma, v_mh = torch.linalg.svd(scale * r_b @ r_a.T)
    return Spectrum(sigma=sigma, u=q_b @ u_m, v=q_a @ v_mh.T)


def dense_spectrum(delta: torch.Tensor) -> Spectrum:
    """Spectrum of a dense ΔW: [d, k] (used to extract adapters from full fine-tunes)."""
    u, sigma, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return Spectrum(sigma=sigma, u=u, v=vh.T)


def truncate(s: Spectrum, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (B: [d, k], A: [k, k_in]) of the best rank-k approximation U_k Σ_k V_kᵀ (Eckart–Young),
    the singular values split evenly: B = U_k √Σ_k, A = √Σ_k V_kᵀ."""
    root = s.sigma[:rank].sqrt()
    return s.u[:, :rank] * root, root[:, None] * s.v[:, :rank].T
