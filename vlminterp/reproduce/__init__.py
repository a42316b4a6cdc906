"""``vlminterp reproduce cmrm|shiftdc``: each paper's protocol on the real benchmark folders, in one command.

The published LLaVA-1.5-7B numbers (:mod:`.published`) sit beside the measured ones in every table.
"""
