"""The peer baselines behind the same interface as GOD / LD3 / INDIS (docs/peers.md):

  gits  GITS (Chen et al., ICML 2024): DP over a fine grid's one-step error costs   (indis.baselines.gits)
  dmn   DMN (Xue et al., CVPR 2024): optimised logSNR steps, data-free              (indis.baselines.dmn)
  sdm   SDM (Jo & Choi 2026): Wasserstein-bounded steps, N-step resampling, adaptive order (indis.baselines.sdm)
  amed  AMED-Plugin (Zhou et al., CVPR 2024) on iPNDM, trained by INDIS's loop     (indis.baselines.amed)
  ld3   LD3 (Tong et al., ICLR 2025): a global schedule with decoupled shifts and the soft x_T ball (indis.baselines.ld3)
  AFS   the analytical first step (Dockhorn et al., GENIE 2022) and per-step orders: options of every method (.common)

The training-free ones produce a PeerSchedule (fixed timesteps plus its solver, per-step orders and AFS), searched
by `indis train --method gits|dmn|sdm` (indis.baselines.search); the trained ones (amed, ld3) by INDIS's loop
(indis.training.train); trained methods with orders / AFS are saved as
Sampled. `indis eval`, run_quality and export accept them.
"""
from .common import AnalyticFirstStep, PeerSchedule, Sampled, order_scheduled, peer_schedule

__all__ = ["AnalyticFirstStep", "PeerSchedule", "Sampled", "order_scheduled", "peer_schedule"]
