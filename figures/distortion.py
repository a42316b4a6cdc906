"""ShiftDC safety perception distortion of the modality shift per layer, by variant and label.

Usage: ``python figures/distortion.py results/representation_gap/results.json [--out PATH_WITHOUT_EXT]``
(HTML always; PNG when the ``export`` extra and a Chrome-family browser are installed).
"""

import sys

from vlminterp.viz import figure_main

if __name__ == "__main__":
    figure_main("distortion", sys.argv[1:])
