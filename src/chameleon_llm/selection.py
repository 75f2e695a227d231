"""Pick k representative history items by PCA over their sentence embeddings."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA


def select_representative(embeddings: torch.Tensor, k: int, *, seed: int = 0) -> list[int]:
    """Indices of ``k`` items: for each of the top principal components in turn, the unused item with
    the largest absolute score on it (so the picks span the main axes of the user's history).

    With ``k`` or fewer items, all are returned in order.
    """
    n = embeddings.shape[0]
    if n <= k:
        return list(range(n))
    x = embeddings.detach().cpu().numpy().astype(np.float64)
    n_comp = min(k, n - 1, x.shape[1])
    scores = PCA(n_components=n_comp, random_state=seed).fit_transform(x)  # (n, n_comp)
    chosen: list[int] = []
    comp = 0
    while len(chosen) < k:
        order = np.argsort(-np.abs(scores[:, comp % n_comp]), kind="stable")
        chosen.append(int(next(i for i in order if i not in chosen)))
        comp += 1
    return sorted(chosen)
