"""Benchmarks: tag metrics on the official RAM evaluation files, COCO metrics for regions.

`metrics` (mAP, CP/CR/CF1/OP/OR/OF1), `datasets` (official taglist / annotation readers), `tags` and
`regions` (the two evaluations behind `recognize eval tags` and `recognize eval regions`).
"""
