"""Dataset formats (GTA5, SYNTHIA, Cityscapes), label maps, preparation and the minicity benchmark.

``domains`` imports neither ``segmenters`` nor ``translators`` (DESIGN.md section 2).
"""
