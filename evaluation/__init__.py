"""Measuring the node on labelled studies: a site's own, or the RSNA 2023 layout.

dataset: the studies and their labels; masks: hemorrhage and organ masks on a series'
grid. Depends on pipeline (one way: the pipeline knows nothing of evaluation).
"""
