"""Dataset formats (GTA5, SYNTHIA, Cityscapes), label maps, preparation and the minicity benchmark.

``domains`` imports neither ``segmenters`` nor ``translators`` (docs/design.md §2.2).
"""
