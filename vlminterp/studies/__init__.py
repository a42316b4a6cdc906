"""The studies behind ``vlminterp gap`` and ``vlminterp sweep --study ...``.

- :mod:`.representation_gap`: PCA, probes, gap metrics, directions and their figures.
- :mod:`.layer_ablation`, :mod:`.head_ablation`, :mod:`.alpha_layer_grid`: the ablation sweeps,
  drawn by :mod:`.ablation_heatmap`.

Example:
    >>> from vlminterp.studies import representation_gap
    >>> representation_gap.RepresentationGapConfig(model="tiny").conditions
    ('image', 'blank', 'text_only', 'caption')
"""
