"""PCA scatter per layer (colour = condition, marker = label) with a layer slider.

Usage: ``python figures/pca_scatter.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("pca_scatter", sys.argv[1:])
