"""Unpaired image translators (stage 1 of the pipeline): SemST, CUT and their building blocks.

Sub-packages:

* :mod:`translators.networks` -- generator (CUT ResNet), PatchGAN discriminator, the patch MLP ``F``
  (PatchSampleF), the ASPP scale-attention head of SemST and weight initialisation.
* :mod:`translators.losses` -- pure loss functions: PatchNCE (CUT), hDCE (SRC / SemST Eq. 7-9),
  rSMI and the TS loss (SCC / SemST Eq. 1-3) and the LSGAN loss.

Everything is NCHW torch with images in [-1, 1].
"""
