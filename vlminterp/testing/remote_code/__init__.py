"""Model source files that vlminterp's tiny builders copy next to the weights as remote code."""
