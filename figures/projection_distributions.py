"""Projections on the safety direction, harmful vs benign, per layer and condition.

Usage: ``python figures/projection_distributions.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("projection_distributions", sys.argv[1:])
