"""Pure loss functions; multi-process gathering lives in losses.dist and nowhere else."""
from sharpshift.losses.barlow import barlow_twins_loss
from sharpshift.losses.contrastive import infonce_queue, nt_xent
from sharpshift.losses.regression import byol_loss, simsiam_loss

__all__ = ["barlow_twins_loss", "byol_loss", "infonce_queue", "nt_xent", "simsiam_loss"]
