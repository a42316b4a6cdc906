"""Cosine similarity of each direction across layers (layer × layer heatmap).

Usage: ``python figures/direction_cosine.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("direction_cosine", sys.argv[1:])
