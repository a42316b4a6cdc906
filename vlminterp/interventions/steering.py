"""SteeringVectors: one vector per decoder layer plus the metadata that says where it came from.

Saved as two files side by side: ``NAME.safetensors`` (tensor ``vectors``, ``[n_layers, d_model]``)
and ``NAME.json`` (metadata). Both are written atomically (tmp + rename). No pickle.

Example:
    >>> import tempfile, pathlib
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.interventions import SteeringVectors
    >>> model = HookedVLM.tiny("llava")
    >>> v = SteeringVectors.zeros(model, method="demo")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo"
    >>> v.save(path).name
    'demo.safetensors'
    >>> SteeringVectors.load(path, model=model).vectors.shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from vlminterp.interventions.base import finite

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["SteeringVectors", "SteeringVectorsMismatchError"]

_FORMAT = "vlminterp.steering_vectors/1"


class SteeringVectorsMismatchError(ValueError):
    """Steering vectors were fitted on a model of another shape or identity than the one given."""


def _version() -> str:
    import vlminterp

    return vlminterp.__version__


@dataclass(frozen=True, eq=False)
class SteeringVectors:
    """A frozen value object: per-layer vectors and their provenance.

    Attributes:
        vectors: One vector per decoder layer (rows of layers not in ``layers`` are zero).
        model_id: Id of the model the vectors were fitted on.
        d_model: Residual width of that model.
        n_layers: Decoder layers of that model.
        hook: Short hook kind the vectors were read at (``"resid_post"``).
        positions: Positions they were read at (``"last"``).
        method: What they are (``"cmrm"``, ``"safety_direction"``, ...).
        anchor: Description of the samples they were fitted on.
        alpha: Strength they are meant to be used with, if any.
        layers: Layers that were fitted.
        meta: Any other JSON-serialisable facts (estimator, blank image, counts).
        version: vlminterp version that fitted them.
    """

    vectors: Float[Tensor, "n_layers d_model"]
    model_id: str
    d_model: int
    n_layers: int
    hook: str = "resid_post"
    positions: str = "last"
    method: str = ""
    anchor: str = ""
    alpha: float | None = None
    layers: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    version: str = field(default_factory=_version)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Tensor) or tuple(self.vectors.shape) != (self.n_layers, self.d_model):
            shape = (
                tuple(self.vectors.shape) if isinstance(self.vectors, Tensor) else type(self.vectors).__name__
            )
            raise ValueError(
                f"SteeringVectors.vectors must be [n_layers={self.n_layers}, d_model={self.d_model}], got {shape}."
            )
        if not self.vectors.is_floating_point():
            raise ValueError(f"SteeringVectors.vectors must be floating point, got {self.vectors.dtype}.")
        if self.alpha is not None:
            object.__setattr__(self, "alpha", finite("SteeringVectors.alpha", self.alpha))
        layers = tuple(int(layer) for layer in (self.layers or range(self.n_layers)))
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ValueError(f"SteeringVectors.layers {bad} are out of range for n_layers={self.n_layers}.")
        object.__setattr__(self, "layers", layers)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(
        cls, model: HookedVLM, vectors: Float[Tensor, "n_layers d_model"], **metadata: Any
    ) -> SteeringVectors:
        """Vectors with ``model``'s id and sizes filled in; ``metadata`` sets the other fields."""
        c = model.cfg
        return cls(vectors=vectors, model_id=c.model_id, d_model=c.d_model, n_layers=c.n_layers, **metadata)

    @classmethod
    def zeros(cls, model: HookedVLM, **metadata: Any) -> SteeringVectors:
        """All-zero vectors for ``model`` (a no-op intervention; useful in tests and docs)."""
        return cls.from_model(model, torch.zeros(model.cfg.n_layers, model.cfg.d_model), **metadata)

    # ------------------------------------------------------------------ views
    def __getitem__(self, layer: int) -> Float[Tensor, " d_model"]:
        """The vector of ``layer`` (must be one of the fitted ``layers``)."""
        if layer not in self.layers:
            raise KeyError(f"Layer {layer} was not fitted; fitted layers: {list(self.layers)}.")
        return self.vectors[layer]

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SteeringVectors:
        """A copy with the vectors on ``device`` / in ``dtype`` (the original is unchanged)."""
        return dataclasses.replace(self, vectors=self.vectors.to(device=device, dtype=dtype).clone())

    def replace(self, **changes: Any) -> SteeringVectors:
        """A copy with ``changes`` applied (e.g. ``alpha=0.3``)."""
        return dataclasses.replace(self, **changes)

    def metadata(self) -> dict[str, Any]:
        """Every field except the tensor, JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "vectors"}
        out["layers"] = list(self.layers)
        return out

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise :class:`SteeringVectorsMismatchError` if some of ``layers`` were not fitted."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise SteeringVectorsMismatchError(
                f"Layers {missing} were not fitted (fitted: {list(self.layers)}). Choose fitted layers or refit."
            )

    def check_compatible(self, model: HookedVLM, layers: Sequence[int] = ()) -> None:
        """Raise :class:`SteeringVectorsMismatchError` unless these vectors fit ``model`` (and ``layers``)."""
        c = model.cfg
        for name, mine, theirs in (
            ("model id", self.model_id, c.model_id),
            ("d_model", self.d_model, c.d_model),
            ("n_layers", self.n_layers, c.n_layers),
        ):
            if mine != theirs:
                raise SteeringVectorsMismatchError(
                    f"These steering vectors were fitted on a model with {name} {mine!r}, but the model has "
                    f"{name} {theirs!r}. Fit them again on this model (vectors do not transfer between models)."
                )
        self.check_layers(layers)

    # ------------------------------------------------------------------ files
    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        p = Path(path)
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the tensor file's path."""
        tensor_path, meta_path = self._paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, **self.metadata()}
        tmp_tensor = tensor_path.with_name(tensor_path.name + ".tmp")
        tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
        save_file(
            {"vectors": self.vectors.detach().cpu().contiguous()},
            str(tmp_tensor),
            metadata={"format": _FORMAT},
        )
        tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp_tensor, tensor_path)
        os.replace(tmp_meta, meta_path)
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, model: HookedVLM | None = None) -> SteeringVectors:
        """Read vectors written by :meth:`save`; with ``model``, refuse vectors fitted on another model.

        Raises:
            FileNotFoundError: one of the two files is missing.
            ValueError: the files are not vlminterp steering vectors.
            SteeringVectorsMismatchError: ``model`` has another id, ``d_model`` or layer count.
        """
        tensor_path, meta_path = cls._paths(path)
        for p in (tensor_path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"Steering vectors file {str(p)!r} does not exist; SteeringVectors.save writes "
                    f"{tensor_path.name!r} and {meta_path.name!r} side by side."
                )
        meta = json.loads(meta_path.read_text())
        if meta.pop("format", None) != _FORMAT:
            raise ValueError(
                f"{str(meta_path)!r} is not a vlminterp steering-vectors file (format {_FORMAT!r})."
            )
        tensors = load_file(str(tensor_path))
        if set(tensors) != {"vectors"}:
            raise ValueError(
                f"{str(tensor_path)!r} must hold exactly one tensor 'vectors', found {sorted(tensors)}."
            )
        meta["layers"] = tuple(meta.get("layers", ()))
        out = cls(vectors=tensors["vectors"], **meta)
        if model is not None:
            out.check_compatible(model)
        return out
