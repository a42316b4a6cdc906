"""ConditionActivations: the one input type of the analyses (per-condition activations + row labels).

Shape glossary: ``n`` rows (one per sample) of one condition, ``layers`` cached layers (their model
indices are in :attr:`ConditionActivations.layers`), ``d_model`` the residual width.

Every analysis in :mod:`vlminterp.analysis` takes either plain arrays (``[n, d_model]`` per layer) or
a :class:`ConditionActivations`, so it works the same on an in-memory cache, a store on disk, or
synthetic data. Arrays are kept in the dtype they came in (float32 caches stay small); every
statistic is computed in float64 from :meth:`ConditionActivations.get`.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis import ConditionActivations
    >>> acts = ConditionActivations(
    ...     {"image": np.zeros((2, 3, 4)), "text_only": np.ones((2, 3, 4))},
    ...     sample_ids={"image": ["a", "b"], "text_only": ["a", "b"]},
    ...     labels={"image": ["harmful", "benign"], "text_only": ["harmful", "benign"]},
    ... )
    >>> acts.conditions, acts.layers, acts.get("text_only", layer=2).shape
    (('image', 'text_only'), (0, 1, 2), (2, 4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float

from vlminterp.hook_names import layer_hook_name
from vlminterp.prompts import Condition

if TYPE_CHECKING:
    from vlminterp.cache import ActivationCache

__all__ = ["ConditionActivations", "condition_key", "check_matrix"]

LABELS = ("harmful", "benign")


def condition_key(condition: Condition | str) -> str:
    """The string key of a condition (``Condition.IMAGE`` -> ``"image"``; other names unchanged)."""
    return condition.value if isinstance(condition, Condition) else str(condition)


def check_matrix(x: Any, name: str, ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """``x`` as a float64 array of one of the ranks ``ndim``, with no NaN/inf and at least one row.

    Raises:
        ValueError: wrong rank, no rows, or non-finite values, naming ``name``.
    """
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim not in ndim:
        shapes = " or ".join({2: "[n, d_model]", 3: "[n, layers, d_model]", 1: "[d_model]"}[k] for k in ndim)
        raise ValueError(f"{name} must have shape {shapes}, got shape {tuple(arr.shape)}.")
    if arr.ndim >= 2 and arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows; every analysis needs at least one sample.")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0]).tolist() if arr.ndim >= 2 else []
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN/inf values (rows {rows[:10]}). Re-collect those samples "
            "(a NaN usually means an overflow in float16: cache in float32) or drop the rows."
        )
    return arr


@dataclass(frozen=True)
class ConditionActivations:
    """Activations of one hook point, per condition, with each row's sample id and label.

    Args:
        x: Condition name -> ``Float[ndarray, "n layers d_model"]``. All conditions share ``layers``
            and ``d_model``; ``n`` may differ.
        sample_ids: Condition -> one id per row (pairs rows across conditions). Default ``"0".."n-1"``.
        labels: Condition -> one label per row (``"harmful"``, ``"benign"`` or None). Default None.
        layers: Model layer index of each position on the ``layers`` axis; default ``0..layers-1``.
        model: Model id, copied into every result row.
        dataset: Dataset name, copied into every result row.

    Raises:
        ValueError: ragged shapes, mismatched layer counts, NaN/inf, duplicate ids, unknown labels.
    """

    x: Mapping[str, Float[np.ndarray, "n layers d_model"]]
    sample_ids: Mapping[str, Sequence[str]] = field(default_factory=dict)
    labels: Mapping[str, Sequence[str | None]] = field(default_factory=dict)
    layers: Sequence[int] | None = None
    model: str = ""
    dataset: str = ""

    def __post_init__(self) -> None:
        if not self.x:
            raise ValueError("ConditionActivations needs at least one condition.")
        x, ids, labels = {}, {}, {}
        shape: tuple[int, int] | None = None
        for cond, arr in self.x.items():
            key = condition_key(cond)
            a = np.asarray(arr.detach().cpu() if hasattr(arr, "detach") else arr)
            if a.dtype.kind != "f":
                a = a.astype(np.float64)
            check_matrix(a, f"Activations of condition {key!r}", ndim=(3,))
            if shape is None:
                shape = a.shape[1:]
            elif a.shape[1:] != shape:
                raise ValueError(
                    f"Condition {key!r} has [layers, d_model] = {list(a.shape[1:])}, but another condition has "
                    f"{list(shape)}. Collect every condition from the same hook points and layers."
                )
            x[key] = a
            n = a.shape[0]
            row_ids = [str(i) for i in self._lookup(self.sample_ids, cond, range(n))]
            row_labels = list(self._lookup(self.labels, cond, [None] * n))
            for what, values in (("sample_ids", row_ids), ("labels", row_labels)):
                if len(values) != n:
                    raise ValueError(
                        f"{what}[{key!r}] has {len(values)} entries for {n} rows; give one per row."
                    )
            if len(set(row_ids)) != n:
                dup = sorted({i for i in row_ids if row_ids.count(i) > 1})[:5]
                raise ValueError(
                    f"Condition {key!r} has duplicate sample ids {dup}; ids pair rows across conditions."
                )
            unknown = {lab for lab in row_labels if lab not in (*LABELS, None)}
            if unknown:
                raise ValueError(
                    f"Condition {key!r} has labels {sorted(unknown)}; use 'harmful', 'benign' or None."
                )
            ids[key], labels[key] = tuple(row_ids), tuple(row_labels)
        layers = tuple(range(shape[0])) if self.layers is None else tuple(int(v) for v in self.layers)
        if len(layers) != shape[0]:
            raise ValueError(
                f"layers lists {len(layers)} layer indices but the arrays hold {shape[0]} layers."
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "sample_ids", ids)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "layers", layers)

    @staticmethod
    def _lookup(mapping: Mapping[Any, Sequence[Any]], cond: Any, default: Any) -> Sequence[Any]:
        for key in (cond, condition_key(cond)):
            if key in mapping:
                return mapping[key]
        return default

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_store(
        cls,
        store: Any,
        conditions: Sequence[Condition | str] | None = None,
        hook: str | None = None,
        *,
        model: str = "",
        dataset: str = "",
    ) -> ConditionActivations:
        """Per-sample vectors of an :class:`~vlminterp.cache.ActivationStore` (collected with vectors kept).

        Args:
            store: The store.
            conditions: Conditions to read; default every collected condition.
            hook: Hook kind, needed when the store holds several.
            model: Model id for result rows (default the store's).
            dataset: Dataset name for result rows.
        """
        conds = [condition_key(c) for c in (conditions or store.conditions)]
        layers = list(store.layers)
        x = {
            c: np.stack([store.vectors(c, layer, hook).float().numpy() for layer in layers], axis=1)
            for c in conds
        }
        ids, labels = [str(i) for i in store.sample_ids], list(store.labels)
        return cls(
            x,
            sample_ids=dict.fromkeys(conds, ids),
            labels=dict.fromkeys(conds, labels),
            layers=layers,
            model=model or str(store.config.get("model_id", "")),
            dataset=dataset,
        )

    @classmethod
    def from_cache(
        cls,
        cache: ActivationCache | Sequence[ActivationCache],
        kind: str = "resid_post",
        *,
        model: str = "",
        dataset: str = "",
    ) -> ConditionActivations:
        """Split cached activations by condition (``cache.meta``), concatenating several batches.

        Args:
            cache: One :class:`~vlminterp.cache.ActivationCache` or a list of them (batches of one run),
                cached with a position selection (``positions="last"``, ...) so entries are ``[batch, d]``.
            kind: The hook kind to read (``cache.stack(kind)`` -> ``[layers, batch, d_model]``).
            model: Model id for the result rows.
            dataset: Dataset name for the result rows.
        """
        caches = [cache] if hasattr(cache, "stack") else list(cache)
        if not caches:
            raise ValueError("from_cache needs at least one ActivationCache.")
        parts: dict[str, list[np.ndarray]] = {}
        ids: dict[str, list[str]] = {}
        labels: dict[str, list[str | None]] = {}
        layers = None
        for c in caches:
            found = sorted(
                int(n.split(".")[1])
                for n in c
                if n.startswith("blocks.") and n == layer_hook_name(kind, int(n.split(".")[1]))
            )
            if not found:
                raise KeyError(
                    f"No {kind!r} activations in this cache; cache them with model.hook_names({kind!r})."
                )
            stacked = c.stack(kind, found)
            if stacked.ndim != 3:
                raise ValueError(
                    f"Cached {kind!r} has shape {tuple(stacked.shape)} per stack, not [layers, batch, d_model]: "
                    "cache with a position selection, e.g. model.run_with_cache(..., positions='last')."
                )
            if layers is not None and found != layers:
                raise ValueError(
                    f"Caches hold different layers ({layers} vs {found}); cache the same layers."
                )
            layers = found
            meta = c.meta
            for key in ("conditions", "sample_ids", "labels"):
                if len(meta.get(key, ())) != stacked.shape[1]:
                    raise ValueError(
                        f"cache.meta[{key!r}] must list one entry per batch row ({stacked.shape[1]})."
                    )
            rows = stacked.float().permute(1, 0, 2).numpy()
            for i, cond in enumerate(meta["conditions"]):
                key = condition_key(cond)
                parts.setdefault(key, []).append(rows[i])
                ids.setdefault(key, []).append(meta["sample_ids"][i])
                labels.setdefault(key, []).append(meta["labels"][i])
        x = {k: np.stack(v) for k, v in parts.items()}
        return cls(x, sample_ids=ids, labels=labels, layers=layers, model=model, dataset=dataset)

    # ------------------------------------------------------------------ views
    @property
    def conditions(self) -> tuple[str, ...]:
        """Condition names, in insertion order."""
        return tuple(self.x)

    def _check_condition(self, condition: Condition | str) -> str:
        key = condition_key(condition)
        if key not in self.x:
            raise KeyError(f"No activations for condition {key!r}; available: {list(self.x)}.")
        return key

    def layer_axis(self, layer: int) -> int:
        """Position of model layer ``layer`` on the ``layers`` axis."""
        if layer not in self.layers:
            raise KeyError(f"Layer {layer} was not collected; available layers: {list(self.layers)}.")
        return self.layers.index(layer)

    def get(
        self, condition: Condition | str, layer: int | None = None, label: str | None = None
    ) -> np.ndarray:
        """Float64 activations of one condition: ``[n, layers, d_model]``, or ``[n, d_model]`` at ``layer``.

        Args:
            condition: Condition name.
            layer: A model layer index (see :attr:`layers`); None returns every layer.
            label: Keep only rows with this label (``"harmful"`` / ``"benign"``).
        """
        key = self._check_condition(condition)
        arr = self.x[key]
        if label is not None:
            if label not in LABELS:
                raise ValueError(f"label must be one of {LABELS}, got {label!r}.")
            arr = arr[np.asarray([lab == label for lab in self.labels[key]], dtype=bool)]
            if not len(arr):
                raise ValueError(f"Condition {key!r} has no {label!r} rows.")
        if layer is not None:
            arr = arr[:, self.layer_axis(layer)]
        return np.asarray(arr, dtype=np.float64)

    def paired(self, a: Condition | str, b: Condition | str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Rows of ``a`` and ``b`` aligned by sample id: ``(ids, x_a, x_b)``, each ``[n, layers, d]``.

        Only samples present in both conditions are kept, in ``a``'s order.

        Raises:
            ValueError: the two conditions share no sample id.
        """
        ka, kb = self._check_condition(a), self._check_condition(b)
        index_b = {sid: i for i, sid in enumerate(self.sample_ids[kb])}
        rows_a = [i for i, sid in enumerate(self.sample_ids[ka]) if sid in index_b]
        if not rows_a:
            raise ValueError(f"Conditions {ka!r} and {kb!r} share no sample id, so rows cannot be paired.")
        ids = [self.sample_ids[ka][i] for i in rows_a]
        rows_b = [index_b[sid] for sid in ids]
        return ids, self.get(ka)[rows_a], self.get(kb)[rows_b]

    def row(self, **fields: Any) -> dict[str, Any]:
        """A tidy result row with this run's ``model`` and ``dataset`` first."""
        return {"model": self.model, "dataset": self.dataset, **fields}
