"""Model loading: HookedVLM, per-family prompt rules, processors and compatibility fixes."""
