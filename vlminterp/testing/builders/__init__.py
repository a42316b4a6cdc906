"""One tiny builder module per family module of :mod:`vlminterp.models.families`.

Importing this package imports every sibling module, and each registers its builders with
:func:`vlminterp.testing.tiny.register_builder`. A new family's builder is a new module here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
