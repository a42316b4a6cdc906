"""Representation-gap metrics per layer (centroid distance, cosine, modality probe, silhouette, gap closed).

Usage: ``python figures/gap_metrics.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("gap_metrics", sys.argv[1:])
