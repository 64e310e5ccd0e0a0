"""Contrastive objectives from the literature, registered in `LOSSES` on import.

  "dcl"             Decoupled Contrastive Learning (Yeh et al., ECCV 2022), with DCLW weighting.
  "contrastive_gap" CLIP + alignment + (cross-modal) uniformity (Fahim, Murphy & Fyshe, 2024).
  "cwcl"            Continuously Weighted Contrastive Loss (Srinivasa et al., NeurIPS 2023).
  "multi_positive"  Decoupled softmax with several positives per instance (Gupta et al., ICLR 2024).
  "pairwise"        Weighted sum of a two-modality objective over pairs of modalities.
  "mv_infonce"      MV-InfoNCE (Koromilas et al., 2025).
  "mv_dhel"         MV-DHEL (Koromilas et al., 2025).
  "gram"            GRAM volume contrastive loss (Cicchetti et al., ICLR 2025).

Each is a factory `(loss_config, *, axis_name) -> Objective` (see clip_jax.losses.registry); the
loss functions themselves (`dcl_loss`, ...) take local `[n, d]` shards and the batch axis name.
"""

from __future__ import annotations

from clip_jax.losses.objectives.contrastive_gap import (contrastive_gap_loss,
                                                       contrastive_gap_objective)
from clip_jax.losses.objectives.cwcl import cwcl_loss, cwcl_objective
from clip_jax.losses.objectives.dcl import dcl_loss, dcl_objective
from clip_jax.losses.objectives.gram import gram_loss, gram_objective
from clip_jax.losses.objectives.multi_positive import multi_positive_loss, multi_positive_objective
from clip_jax.losses.objectives.multiview import (mv_dhel_loss, mv_dhel_objective, mv_infonce_loss,
                                                  mv_infonce_objective)
from clip_jax.losses.objectives.pairwise import pairwise_objective

__all__ = [
    "contrastive_gap_loss", "contrastive_gap_objective",
    "cwcl_loss", "cwcl_objective",
    "dcl_loss", "dcl_objective",
    "gram_loss", "gram_objective",
    "multi_positive_loss", "multi_positive_objective",
    "mv_dhel_loss", "mv_dhel_objective", "mv_infonce_loss", "mv_infonce_objective",
    "pairwise_objective",
]
