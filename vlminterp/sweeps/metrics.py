"""Sweep metrics: what :func:`vlminterp.sweeps.sweep` measures at every grid point, per row of the batch.

The values are means over the rows a metric reads (its ``label``); ``n`` counts them.

- :class:`RefusalScore`: mean over rows of ``mean(logits[refusal]) - mean(logits[compliance])`` at
  the first generated position (no generation). Defaults ``sorry`` / ``sure`` (the organism's).
- :class:`JudgedRefusalRate`: fraction of generations a judge calls refusals.
- :class:`KLToUnsteered`: ``KL(p_unsteered || p_steered)`` of the next-token distribution at the last
  prompt position, on benign rows (the utility cost).
- :class:`GapClosed`: ``1 - |h_steered - h_target| / |h_unsteered - h_target|`` at one layer's last
  position; the target is each row's twin under another condition (TEXT_ONLY) or given activations.

Example:
    >>> [m.name for m in resolve_metrics(["refusal_score", KLToUnsteered()])]
    ['refusal_score', 'kl_to_unsteered']
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "Observation",
    "Metric",
    "RefusalScore",
    "JudgedRefusalRate",
    "KLToUnsteered",
    "GapClosed",
    "METRICS",
    "resolve_metrics",
    "token_ids",
]


# ---------------------------------------------------------------------- observations
@dataclass
class Observation:
    """What one run of the batch (steered or not) gave, at the last prompt position.

    Attributes:
        logits: Next-token logits ``[rows, d_vocab]`` (float32, CPU).
        captured: Hook name -> activation ``[rows, d]`` for hooks metrics asked for.
        texts: Generated texts per row (only when a metric generates).
    """

    logits: Float[Tensor, "rows d_vocab"]
    captured: dict[str, Float[Tensor, "rows d"]]
    texts: list[str] | None = None


# ---------------------------------------------------------------------- metrics
class Metric(abc.ABC):
    """A per-row measurement averaged over the rows of one label.

    Subclasses set ``name`` and implement :meth:`values`; override :meth:`bind` (model-dependent
    set-up), :meth:`capture` (hooks to record) and :meth:`reference` (per-batch reference state).

    Args:
        label: Only rows of samples with this label (``"harmful"``, ``"benign"``); None = every row.
    """

    name: str = ""
    generates: bool = False

    def __init__(self, label: str | None = None):
        self.label = label

    def bind(self, model: HookedVLM) -> None:
        """Resolve model-dependent settings (token ids, hook names) once per sweep (default: none)."""
        return None

    def capture(self, model: HookedVLM) -> list[str]:
        """Hook names whose last-position activations :meth:`values` needs."""
        return []

    def reference(
        self, model: HookedVLM, batch: PromptBatch, samples: Mapping[str, Sample], unsteered: Observation
    ) -> Any:
        """Per-batch reference state passed to :meth:`values` (default: the unsteered observation)."""
        return unsteered

    @abc.abstractmethod
    def values(self, observed: Observation, reference: Any, rows: list[int]) -> Float[Tensor, " rows"]:
        """One value per row in ``rows`` (NaN = this row has no value and is not counted)."""

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "label": self.label}


def token_ids(model: HookedVLM, tokens: Iterable[str | int]) -> list[int]:
    """Token ids of ``tokens`` (words that are one token each, or ids), validated.

    Raises:
        ValueError: a word that is several tokens or unknown to the tokenizer, an id out of range.
    """
    tok = model.tokenizer
    out = []
    for t in tokens:
        if isinstance(t, int):
            if not 0 <= t < model.cfg.d_vocab:
                raise ValueError(f"Token id {t} is out of range for a vocabulary of {model.cfg.d_vocab}.")
            out.append(t)
            continue
        ids = tok.encode(t, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tok.unk_token_id:
            pieces = tok.convert_ids_to_tokens(ids)
            raise ValueError(
                f"Token {t!r} is {pieces} in this tokenizer, not one known token. Pass a word that is a single "
                "token (e.g. with its leading space), or its token id."
            )
        out.append(ids[0])
    if not out:
        raise ValueError("A token set is empty; give at least one token.")
    return out


class RefusalScore(Metric):
    """``mean(logits[refusal]) - mean(logits[compliance])`` at the first generated position.

    Args:
        refusal: Words (single tokens) or ids that open a refusal.
        compliance: Words or ids that open a compliant answer.
        label: Rows to average (default ``"harmful"``; None = all rows).

    Example:
        >>> import torch
        >>> score = RefusalScore(refusal=[0, 1], compliance=[2])
        >>> score.ids = ([0, 1], [2])  # what bind(model) resolves
        >>> score.values(Observation(torch.tensor([[1.0, 3.0, 0.5]]), {}), None, [0]).tolist()
        [1.5]
    """

    name = "refusal_score"

    def __init__(
        self,
        refusal: Sequence[str | int] = ("sorry",),
        compliance: Sequence[str | int] = ("sure",),
        label: str | None = "harmful",
    ):
        super().__init__(label)
        self.refusal, self.compliance = list(refusal), list(compliance)
        self.ids: tuple[list[int], list[int]] | None = None

    def bind(self, model: HookedVLM) -> None:
        self.ids = (token_ids(model, self.refusal), token_ids(model, self.compliance))

    def values(self, observed: Observation, reference: Any, rows: list[int]) -> Tensor:
        if self.ids is None:
            raise ValueError("RefusalScore needs the model's token ids: call bind(model) first (sweep does).")
        logits = observed.logits[rows].double()
        refusal, compliance = self.ids
        return logits[:, refusal].mean(-1) - logits[:, compliance].mean(-1)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "refusal": self.refusal, "compliance": self.compliance}


class KLToUnsteered(Metric):
    """``KL(p_unsteered || p_steered)`` of the next-token distribution at the last prompt position (nats).

    Args:
        label: Rows to average (default ``"benign"``: the utility cost of steering).
    """

    name = "kl_to_unsteered"

    def __init__(self, label: str | None = "benign"):
        super().__init__(label)

    def values(self, observed: Observation, reference: Observation, rows: list[int]) -> Tensor:
        log_p = reference.logits[rows].double().log_softmax(-1)
        log_q = observed.logits[rows].double().log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)


class JudgedRefusalRate(Metric):
    """Fraction of generated responses a judge calls refusals.

    Args:
        judge: ``text -> bool`` (True = refusal, e.g. ``vlminterp.organism.judge.is_refusal``), or a
            :class:`vlminterp.eval.judges.Judge` (its verdicts' ``refused``).
        max_new_tokens: Tokens generated per response (greedy).
        label: Rows to average (default ``"harmful"``).
    """

    name = "judged_refusal_rate"
    generates = True

    def __init__(
        self, judge: Callable[[str], bool] | Any, max_new_tokens: int = 8, label: str | None = "harmful"
    ):
        super().__init__(label)
        if not (callable(judge) or hasattr(judge, "judge")):
            raise ValueError(
                f"JudgedRefusalRate needs a judge (text -> bool, or a Judge); got {type(judge).__name__}."
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.judge, self.max_new_tokens = judge, max_new_tokens

    def reference(self, model, batch, samples, unsteered):
        return [samples.get(sid) for sid in batch.sample_ids]

    def values(self, observed: Observation, reference: list[Sample | None], rows: list[int]) -> Tensor:
        if observed.texts is None:
            raise ValueError("JudgedRefusalRate needs generated texts; run it through sweep().")
        texts = [observed.texts[i] for i in rows]
        if hasattr(self.judge, "judge"):
            refused = [v.refused for v in self.judge.judge([reference[i] for i in rows], texts)]
        else:
            refused = [bool(self.judge(t)) for t in texts]
        return torch.tensor(refused, dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        name = getattr(self.judge, "name", None) or getattr(self.judge, "__name__", type(self.judge).__name__)
        return {**super().to_dict(), "judge": name, "max_new_tokens": self.max_new_tokens}


class GapClosed(Metric):
    """Fraction of the distance to a target closed: ``1 - |h_s - h_t| / |h_u - h_t|`` per row.

    ``h_s`` steered and ``h_u`` unsteered last-position activations at ``hook``/``layer``; ``h_t`` the
    target. Rows already at their target (``h_u == h_t``) are not counted.

    Args:
        layer: Layer to measure (default the last).
        hook: Hook kind (``"resid_post"``).
        target: A condition (each row's own sample under it, e.g. TEXT_ONLY: the modality gap), or
            given activations ``{sample_id: [d]}``.
        label: Rows to average (None = all).
    """

    name = "gap_closed"

    def __init__(
        self,
        layer: int | None = None,
        hook: str = "resid_post",
        target: Condition | str | Mapping[str, Tensor] = Condition.TEXT_ONLY,
        label: str | None = None,
    ):
        super().__init__(label)
        self.layer, self.hook = layer, hook
        self.target = target if isinstance(target, Mapping) else Condition.parse(target)
        self._name: str | None = None

    def bind(self, model: HookedVLM) -> None:
        layer = model.cfg.n_layers - 1 if self.layer is None else self.layer
        self._name = model.layer_hook(self.hook, layer)

    def capture(self, model: HookedVLM) -> list[str]:
        self.bind(model)
        return [self._name]

    def reference(self, model, batch, samples, unsteered):
        if isinstance(self.target, Mapping):
            missing = [sid for sid in batch.sample_ids if sid not in self.target]
            if missing:
                raise ValueError(f"GapClosed target has no activations for samples {missing[:5]}.")
            target = torch.stack([self.target[sid].float().cpu() for sid in batch.sample_ids])
        else:
            twins = PromptBatch.paired(model, [samples[sid] for sid in batch.sample_ids], [self.target])
            _, cache = model.run_with_cache(twins, names_filter=[self._name], positions="last")
            target = cache[self._name].float()
        return target, unsteered.captured[self._name]

    def values(self, observed: Observation, reference: tuple[Tensor, Tensor], rows: list[int]) -> Tensor:
        target, unsteered = (t[rows].double() for t in reference)
        steered = observed.captured[self._name][rows].double()
        base = (unsteered - target).norm(dim=-1)
        closed = 1 - (steered - target).norm(dim=-1) / base
        return torch.where(base > 0, closed, torch.full_like(closed, float("nan")))

    def to_dict(self) -> dict[str, Any]:
        target = "activations" if isinstance(self.target, Mapping) else self.target.value
        return {**super().to_dict(), "layer": self.layer, "hook": self.hook, "target": target}


#: Metrics that can be named by string (the others need arguments: a judge).
METRICS: dict[str, Callable[[], Metric]] = {
    "refusal_score": RefusalScore,
    "kl_to_unsteered": KLToUnsteered,
    "gap_closed": GapClosed,
}


def resolve_metrics(metric: Metric | str | Sequence[Metric | str]) -> list[Metric]:
    """Metric objects of ``metric`` (one, several, or names from :data:`METRICS`), checked: names unique.

    Raises:
        ValueError: an unknown name, a non-metric, no metric, or two metrics of one name.
    """
    items = [metric] if isinstance(metric, (Metric, str)) else list(metric)
    out = []
    for m in items:
        if isinstance(m, str):
            if m == "judged_refusal_rate":
                raise ValueError("judged_refusal_rate needs a judge: pass JudgedRefusalRate(judge=...).")
            if m not in METRICS:
                raise ValueError(f"Unknown metric {m!r}. Choose from {sorted(METRICS)} or pass a Metric.")
            m = METRICS[m]()
        if not isinstance(m, Metric):
            raise ValueError(f"metric must be a Metric or a metric name, got {type(m).__name__}.")
        out.append(m)
    if not out:
        raise ValueError("sweep needs at least one metric.")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Metrics {names} repeat a name; one metric of each kind per sweep.")
    return out
