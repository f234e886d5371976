"""The World Action Model: experts, Mixture-of-Transformers layer loop, masks, flow matching."""

from fastwam.model.wam import WAM, Batch, LossOutput

__all__ = ["WAM", "Batch", "LossOutput"]
