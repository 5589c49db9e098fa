"""Training-free peer baselines behind the same interface as GOD / LD3 / INDIS (docs/peers.md):

  gits  GITS (Chen et al., ICML 2024): DP over a fine grid's one-step error costs   (indis.baselines.gits)
  dmn   DMN (Xue et al., CVPR 2024): optimised logSNR steps, data-free              (indis.baselines.dmn)
  sdm   SDM (Jo & Choi 2026): Wasserstein-bounded steps, N-step resampling, adaptive order (indis.baselines.sdm)
  AFS   the analytical first step (Dockhorn et al., GENIE 2022), an option of every PeerSchedule (.common)

Each produces a PeerSchedule (fixed timesteps plus its solver, per-step orders and AFS), which `indis train
--method gits|dmn|sdm`, `indis eval`, run_quality and export accept (indis.baselines.search).
"""
from .common import AnalyticFirstStep, PeerSchedule, order_scheduled, peer_schedule

__all__ = ["AnalyticFirstStep", "PeerSchedule", "order_scheduled", "peer_schedule"]
