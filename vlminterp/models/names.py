"""Re-export of :mod:`vlminterp.hook_names` under its former path, for modules not yet switched.

Import from :mod:`vlminterp.hook_names`; this module goes once ``vlminterp.interventions`` does.
"""

from vlminterp.hook_names import ATTN_KINDS, NamesFilter, layer_hook_name, resolve_names

__all__ = ["layer_hook_name", "NamesFilter", "resolve_names", "ATTN_KINDS"]
