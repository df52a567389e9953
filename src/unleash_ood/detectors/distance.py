"""Nearest-neighbour detector on normalized penultimate features: KNN."""

from __future__ import annotations

import importlib.util

import torch

from .base import Detector, FitData, fit_error, register
from .params import KNNParams

QUERY_CHUNK = 1024
BANK_CHUNK = 8192  # QUERY_CHUNK × BANK_CHUNK float32 distances: 32 MiB at most
FAISS_MIN_BANK = 50_000  # below this plain torch is as fast; faiss (optional) only for large banks


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """``h / ‖h‖`` per row (a zero row stays zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kth_nearest_distance(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean distance from each query to its k-th nearest bank row, exact and in bounded memory:
    queries in chunks of ``QUERY_CHUNK``, the bank in chunks of ``BANK_CHUNK`` with a running top-k."""
    bank = bank.to(queries)
    bank_sq = (bank * bank).sum(1)
    chunk = max(BANK_CHUNK, k)  # the first chunk holds ≥ k rows (k ≤ bank size): topk(k) is always valid
    out = []
    for q in queries.split(QUERY_CHUNK):
        q_sq = (q * q).sum(1, keepdim=True)
        best = None
        for b, b_sq in zip(bank.split(chunk), bank_sq.split(chunk)):
            d2 = (q_sq + b_sq[None, :] - 2.0 * q @ b.T).clamp_min(0.0)
            both = d2 if best is None else torch.cat([best, d2], dim=1)
            best = both.topk(k, dim=1, largest=False).values
        out.append(best[:, k - 1])
    return torch.cat(out).sqrt()


def faiss_kth_nearest_distance(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The same distances from faiss's exact flat L2 index (when faiss is installed)."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank.detach().cpu().float().contiguous().numpy())
    d2, _ = index.search(queries.detach().cpu().float().contiguous().numpy(), k)
    return torch.from_numpy(d2[:, k - 1]).clamp_min(0.0).sqrt().to(queries.device)


@register
class KNN(Detector):
    """KNN (Sun et al., ICML 2022): −‖z − z₍ₖ₎‖ with z = h/‖h‖ and z₍ₖ₎ the k-th nearest normalized
    feature of the training split passed to ``fit`` (the bank)."""

    name = "KNN"
    Params = KNNParams
    needs_fit = True

    def fit(self, data: FitData) -> Detector:
        if self.params.k > len(data.features):
            raise fit_error(self.name, "k", self.params.k, f"larger than the training bank ({len(data.features)} samples)")
        self.stats = {"bank": l2_normalize(data.features.float())}
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return -kth_nearest_distance(l2_normalize(features), self.stats["bank"], self.params.k)

    def score_bulk(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        bank = self.stats.get("bank")
        if bank is not None and len(bank) >= FAISS_MIN_BANK and importlib.util.find_spec("faiss") is not None:
            return -faiss_kth_nearest_distance(l2_normalize(features), bank, self.params.k)
        return self.score(logits, features)
