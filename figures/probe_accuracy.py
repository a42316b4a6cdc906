"""Harmful-vs-benign probe accuracy per layer, one curve per train→test pair with 95% CI bands.

Usage: ``python figures/probe_accuracy.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("probe_accuracy", sys.argv[1:])
