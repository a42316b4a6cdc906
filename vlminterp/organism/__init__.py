"""The model organism: a tiny LLaVA, trained from scratch, whose text-trained refusal breaks with an image.

Modules: :mod:`~vlminterp.organism.language` (vocabulary, templates, held-out split),
:mod:`~vlminterp.organism.images` (shape and blank images), :mod:`~vlminterp.organism.data`
(training mixes and their encoding), :mod:`~vlminterp.organism.train` (``train_organism``),
:mod:`~vlminterp.organism.tasks` (benchmark ``Sample`` sets), :mod:`~vlminterp.organism.judge`
(refusal and utility judges), :mod:`~vlminterp.organism.evaluate` (tidy refusal / utility rows).
The shipped checkpoint lives in ``weights/`` (see :mod:`vlminterp.models.organism`).

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.organism.tasks import organism_samples
    >>> model = HookedVLM.from_organism()
    >>> len(organism_samples("test", "harmful"))
    64
"""
