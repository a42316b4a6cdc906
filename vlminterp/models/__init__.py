"""Model loading: HookedVLM, per-family prompt rules, tiny offline builders."""
