"""Translator losses as pure functions (CUT PatchNCE, SRC/SemST hDCE, SCC/SemST rSMI + TS, LSGAN)."""
from .gan import lsgan_loss
from .hdce import hdce_coupled_value, hdce_gamma, hdce_loss, hdce_weights
from .patchnce import patchnce_loss
from .rsmi import median_distance, rsmi, rsmi_batched, ts_loss

__all__ = ["hdce_coupled_value", "hdce_gamma", "hdce_loss", "hdce_weights", "lsgan_loss", "median_distance",
           "patchnce_loss", "rsmi", "rsmi_batched", "ts_loss"]
