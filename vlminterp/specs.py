"""The specs every command and study shares: model, dataset and judge, parsed and checked once.

Parsing validates (names, splits, folders, presets) without loading anything, so a command checks
all its arguments before it writes a file; ``load`` / ``build`` then do the work.

A model spec is ``organism`` (the shipped toy VLM), ``tiny`` / ``tiny:FAMILY`` (a tiny random VLM
built offline; ``tiny`` is ``tiny:llava``), a local checkpoint folder, or a hub id. Parsing
validates without loading anything; :meth:`ModelSpec.load` loads. :attr:`ModelSpec.name` (and
:func:`model_name` for a loaded model) is the string that names the model in result files and
figure subtitles: never a machine path.

A dataset spec (:class:`DatasetSpec`) is ``DATASET[:split]`` with a root folder, a per-label limit
and what to do about missing images: ``organism`` (the shipped organism's ``test`` / ``val`` /
``train`` requests, harmful then benign, one image each), ``tiny`` / ``demo`` (synthetic sets,
:mod:`vlminterp.data.synthetic`), or a :mod:`vlminterp.data` benchmark read from ``root``. A judge
spec (:class:`JudgeSpec`) is ``none``, ``organism`` (the response starts with ``sorry``),
``keyword:<preset>`` (:data:`vlminterp.eval.judges.KEYWORD_PRESETS`, lists from ``judges_dir``),
``llama-guard:<checkpoint folder>`` (:class:`vlminterp.eval.llama_guard.LlamaGuardJudge`) or
``llm:<model>[:<prompt set>]`` (:class:`vlminterp.eval.http_judge.EndpointJudge` over the
OpenAI-compatible endpoint named by ``VLMINTERP_JUDGE_BASE_URL``; prompt set ``mm-safetybench``).

Example:
    >>> spec = ModelSpec.parse("tiny")
    >>> spec.kind, spec.source, spec.name
    ('tiny', 'llava', 'tiny:llava')
    >>> ModelSpec.parse("organism").name
    'organism'
    >>> ModelSpec.parse("llava-hf/llava-1.5-7b-hf").name
    'llava-hf/llava-1.5-7b-hf'
    >>> data = DatasetSpec.parse("organism:val", limit=2)
    >>> str(data), [s.label for s in data.load()]
    ('organism:val', ['harmful', 'harmful', 'benign', 'benign'])
    >>> JudgeSpec.parse("organism").build().judge(None, ["sorry , no ."])[0].refused
    True
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlminterp.eval.judges import Judge
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import Sample

__all__ = [
    "MODEL_SPEC_HELP",
    "DATASET_SPEC_HELP",
    "JUDGE_SPEC_HELP",
    "DEFAULT_JUDGES_DIR",
    "ModelSpec",
    "DatasetSpec",
    "JudgeSpec",
    "model_name",
    "load_model",
]

#: ``--model`` help text of every command.
MODEL_SPEC_HELP = "organism | tiny | tiny:FAMILY | a hub id or a local checkpoint folder"
#: ``--dataset`` / ``--eval`` help text of every command.
DATASET_SPEC_HELP = "organism[:test|val|train] | tiny | demo | a vlminterp.data name[:split] (with its root)"
#: ``--judge`` help text of every command.
JUDGE_SPEC_HELP = (
    "none | organism | keyword:<preset> | llama-guard:<checkpoint folder> | llm:<model>[:mm-safetybench]"
)
#: Folder of the published keyword lists in a source checkout (``shared/data/judges`` next to it).
DEFAULT_JUDGES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "judges"
_SYNTHETIC = ("tiny", "demo")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        kind: ``organism``, ``tiny`` or ``checkpoint``.
        source: The tiny family, the checkpoint's hub id or folder ('' for the organism).
    """

    kind: str
    source: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Validate ``text`` (no loading, no network).

        Raises:
            ValueError: an empty spec, an unknown tiny family, a folder without ``config.json``, or
                neither an existing folder nor a hub id shape (``name`` or ``owner/name``).

        Example:
            >>> ModelSpec.parse("tiny:gemma3")
            ModelSpec(kind='tiny', source='gemma3')
        """
        text = str(text).strip()
        if text == "organism":
            return cls("organism")
        if text == "tiny" or text.startswith("tiny:"):
            from vlminterp.testing import tiny_families

            family = text.partition(":")[2] or "llava"
            if family not in tiny_families():
                raise ValueError(
                    f"--model {text!r}: no tiny builder for {family!r}; choose from {tiny_families()}."
                )
            return cls("tiny", family)
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"--model {text!r}: the folder holds no config.json (not a checkpoint).")
            return cls("checkpoint", str(path))
        if not _HUB_ID.fullmatch(text):
            raise ValueError(f"--model {text!r}: no such folder, and not a hub id; give {MODEL_SPEC_HELP}.")
        return cls("checkpoint", text)

    @property
    def name(self) -> str:
        """The model's name in results: ``organism``, ``tiny:FAMILY``, a hub id or a folder's name."""
        if self.kind == "organism":
            return "organism"
        if self.kind == "tiny":
            return f"tiny:{self.source}"
        return Path(self.source).name if Path(self.source).is_dir() else self.source

    def load(self, device: str = "cpu", device_map: str | None = None) -> HookedVLM:
        """Load the model (tiny models are built on the CPU).

        Example:
            >>> ModelSpec.parse("tiny").load().cfg.family
            'llava'
        """
        from vlminterp.models.hooked_vlm import HookedVLM

        if self.kind == "organism":
            return HookedVLM.from_organism(device=device)
        if self.kind == "tiny":
            return HookedVLM.tiny(self.source)
        return HookedVLM.from_pretrained(self.source, device=device, device_map=device_map)


def load_model(spec: str, **kwargs: Any) -> HookedVLM:
    """``ModelSpec.parse(spec).load(**kwargs)``.

    Example:
        >>> load_model("tiny:llava").cfg.n_layers > 0
        True
    """
    return ModelSpec.parse(spec).load(**kwargs)


def model_name(model: HookedVLM) -> str:
    """The spec naming a loaded model in results (``organism``, ``tiny:FAMILY``, hub id, folder name).

    Example:
        >>> model_name(load_model("tiny"))
        'tiny:llava'
    """
    from vlminterp.models.organism import organism_dir

    source = Path(model.cfg.model_id)
    if not source.is_dir():
        return model.cfg.model_id
    if source.resolve() == organism_dir().resolve():
        return "organism"
    if source.resolve().parent == (Path(tempfile.gettempdir()) / "vlminterp-tiny").resolve():
        return f"tiny:{model.cfg.family}"
    return source.name


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to read: ``DATASET[:split]``, its root folder, a per-label limit and ``on_missing``.

    Attributes:
        name: ``organism``, ``tiny``, ``demo`` or a :func:`vlminterp.data.names` name.
        split: The split (organism: ``test`` by default; a benchmark: its first split when None).
        root: The benchmark's folder (benchmarks only).
        limit: Keep the first ``limit`` samples of each label, in dataset order (None: all).
        on_missing: What a benchmark does about missing image files (:data:`vlminterp.data.ON_MISSING`).
        options: Benchmark options passed to :func:`vlminterp.data.load` (``{"scenarios": ["01"]}``).
    """

    name: str
    split: str | None = None
    root: str | None = None
    limit: int | None = None
    on_missing: str = "raise"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        text: str,
        root: str | Path | None = None,
        limit: int | None = None,
        on_missing: str = "raise",
        options: Mapping[str, Any] | None = None,
        option: str = "--dataset",
        root_option: str = "--root",
    ) -> DatasetSpec:
        """Validate ``DATASET[:split]`` and its settings (no loading).

        Args:
            text: ``DATASET[:split]``.
            root: The benchmark's folder (needed by benchmarks, an existing folder).
            limit: First samples per label (>= 1), or None.
            on_missing: A value of :data:`vlminterp.data.ON_MISSING`.
            options: Benchmark options.
            option: The command-line option named in error messages.
            root_option: The option that gives ``root``, named when it is missing.

        Raises:
            ValueError: an unknown dataset or organism split, a bad limit or on_missing, a benchmark
                without an existing ``root`` folder.

        Example:
            >>> DatasetSpec.parse("organism:train")
            DatasetSpec(name='organism', split='train', root=None, limit=None, on_missing='raise', options={})
            >>> DatasetSpec.parse("figstep", option="--eval")
            Traceback (most recent call last):
            ...
            ValueError: --eval 'figstep' is read from files: pass --root (the folder holding it).
        """
        from vlminterp import data
        from vlminterp.organism.tasks import SPLITS

        name, _, split = str(text).partition(":")
        name = name.strip().lower()
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(
                f"{option} {text!r}: the limit must be a positive integer or None, got {limit!r}."
            )
        if on_missing not in data.ON_MISSING:
            raise ValueError(
                f"{option} {text!r}: on_missing must be one of {list(data.ON_MISSING)}, got {on_missing!r}."
            )
        settings = {"limit": limit, "on_missing": on_missing, "options": dict(options or {})}
        if name == "organism":
            split = split or "test"
            if split not in SPLITS:
                raise ValueError(f"{option} {text!r}: the organism has splits {list(SPLITS)}, not {split!r}.")
            return cls(name, split, **settings)
        if name in _SYNTHETIC:
            if split:
                raise ValueError(f"{option} {text!r}: the synthetic set {name!r} has no splits.")
            return cls(name, **settings)
        if name.replace("_", "-") not in data.names():
            raise ValueError(
                f"{option} {text!r}: unknown dataset {name!r}. Use organism, tiny, demo or one of {data.names()}."
            )
        if root is None:
            raise ValueError(
                f"{option} {text!r} is read from files: pass {root_option} (the folder holding it)."
            )
        if not Path(root).is_dir():
            raise ValueError(f"{option} {text!r}: {root_option} {str(root)!r} is not a folder.")
        return cls(name, split or None, str(root), **settings)

    def __str__(self) -> str:
        return f"{self.name}:{self.split}" if self.split else self.name

    def load(self, per_label: Mapping[str, int] | None = None) -> list[Sample]:
        """The samples, in dataset order: the first :attr:`limit` of each label (all when None).

        Args:
            per_label: Label -> how many to keep, instead of :attr:`limit` (labels not named are dropped).

        Example:
            >>> [s.label for s in DatasetSpec.parse("tiny", limit=1).load()]
            ['benign', 'harmful']
            >>> len(DatasetSpec.parse("demo").load({"harmful": 3, "benign": 0}))
            3
        """
        if self.name == "organism":
            from vlminterp.organism.tasks import organism_samples

            samples = [
                s for kind in ("harmful", "benign") for s in organism_samples(self.split, kind, n_images=1)
            ]
        elif self.name in _SYNTHETIC:
            from vlminterp.data.synthetic import demo_samples, tiny_samples

            most = max(per_label.values(), default=0) if per_label is not None else self.limit
            if self.name == "tiny":
                samples = tiny_samples(6 if most is None else 2 * most)
            else:
                samples = demo_samples(12 if most is None else most)
        else:
            from vlminterp import data

            first = self.limit if per_label is None else per_label
            # The first samples of each label are chosen before their images are checked or generated.
            samples = data.load(
                self.name,
                self.root,
                split=self.split,
                on_missing=self.on_missing,
                first=first,
                **self.options,
            )
        if per_label is None and self.limit is None:
            return list(samples)
        from vlminterp.data.registry import first_per_label

        return first_per_label(list(samples), self.limit if per_label is None else per_label)


@dataclass(frozen=True)
class JudgeSpec:
    """A judge to build: ``none``, ``organism``, ``keyword:<preset>`` (with its lists' folder),
    ``llama-guard:<folder>`` or ``llm:<model>[:<prompt set>]``.

    Example:
        >>> JudgeSpec.parse("keyword:gcg", judges_dir=".").name
        'keyword:gcg'
        >>> JudgeSpec.parse("gpt4")
        Traceback (most recent call last):
        ...
        ValueError: --judge 'gpt4': use none, organism, keyword:<preset> (a preset from ['gcg', 'gcg_api', 'gcg_attack_manager', 'gcg_demo', 'refusal_direction', 'vlguard']), llama-guard:<checkpoint folder> or llm:<model>[:<prompt set>].
    """

    kind: str
    preset: str = ""
    judges_dir: str | None = None
    prompt_set: str = ""

    @classmethod
    def parse(cls, text: str, judges_dir: str | Path | None = None, option: str = "--judge") -> JudgeSpec:
        """Validate a judge spec (a keyword judge's folder must exist; default :data:`DEFAULT_JUDGES_DIR`).

        Raises:
            ValueError: an unknown judge or preset, or a keyword folder that does not exist.
        """
        from vlminterp.eval.judges import KEYWORD_PRESETS

        text = str(text).strip()
        if text in ("none", "organism"):
            return cls(text)
        kind, _, preset = text.partition(":")
        if kind == "llama-guard":
            if not (Path(preset).expanduser() / "config.json").is_file():
                raise ValueError(
                    f"{option} {text!r}: {preset!r} is not a checkpoint folder with config.json; download a "
                    "Llama-Guard checkpoint (e.g. meta-llama/Llama-Guard-3-8B) and pass its folder."
                )
            return cls("llama-guard", str(Path(preset).expanduser()))
        if kind == "llm":
            return cls._parse_llm(text, preset, option)
        if kind != "keyword" or preset not in KEYWORD_PRESETS:
            raise ValueError(
                f"{option} {text!r}: use none, organism, keyword:<preset> (a preset from {sorted(KEYWORD_PRESETS)}), "
                "llama-guard:<checkpoint folder> or llm:<model>[:<prompt set>]."
            )
        folder = Path(judges_dir) if judges_dir is not None else DEFAULT_JUDGES_DIR
        if not folder.is_dir():
            raise ValueError(
                f"{option} {text!r} reads its keyword list from --judges-dir; {str(folder)!r} is not a folder."
            )
        return cls("keyword", preset, str(folder))

    @classmethod
    def _parse_llm(cls, text: str, rest: str, option: str) -> JudgeSpec:
        from vlminterp.eval.endpoint import BASE_URL_ENV, base_url_from_env
        from vlminterp.eval.judge_prompts import PROMPT_SETS

        safety = sorted(n for n, p in PROMPT_SETS.items() if p.kind == "safety")
        model, _, prompt_set = rest.rpartition(":")
        if prompt_set not in PROMPT_SETS:  # no prompt set given: the model name may hold ':' itself
            model, prompt_set = rest, "mm-safetybench"
        if not model:
            raise ValueError(f"{option} {text!r}: name the judge model, llm:<model>[:<prompt set>].")
        if prompt_set not in safety:
            raise ValueError(
                f"{option} {text!r}: {prompt_set!r} grades utility, it does not judge safety; use a safety prompt "
                f"set {safety} (graders: vlminterp.eval.http_judge.EndpointGrader)."
            )
        if base_url_from_env() is None:
            raise ValueError(
                f"{option} {text!r}: set {BASE_URL_ENV[0]} (or {BASE_URL_ENV[1]}) to the judge's OpenAI-compatible "
                "base URL, e.g. https://api.openai.com/v1, and its key in VLMINTERP_JUDGE_API_KEY."
            )
        return cls("llm", model, prompt_set=prompt_set)

    @property
    def name(self) -> str:
        """The spec as text (the ``judge`` column of result rows; a Llama-Guard folder by its name)."""
        if self.kind == "keyword":
            return f"keyword:{self.preset}"
        if self.kind == "llama-guard":
            return f"llama-guard:{Path(self.preset).name}"
        if self.kind == "llm":
            return f"llm:{self.preset}:{self.prompt_set}"
        return self.kind

    def build(self, cache: str | Path | None = None) -> Judge | None:
        """The judge (None for ``none``).

        Args:
            cache: Reply cache of an ``llm`` judge (default ``$VLMINTERP_JUDGE_CACHE``, else
                ``~/.cache/vlminterp/judges/<model>.jsonl``; replies are keyed by model and prompt, so
                one file serves every run).
        """
        from vlminterp.eval.judges import KeywordJudge, PredicateJudge

        if self.kind == "none":
            return None
        if self.kind == "organism":
            from vlminterp.organism.judge import is_refusal

            return PredicateJudge(is_refusal, "organism")
        if self.kind == "llama-guard":
            from vlminterp.eval.llama_guard import LlamaGuardJudge

            return LlamaGuardJudge.from_pretrained(self.preset, name=self.name)
        if self.kind == "llm":
            import os

            from vlminterp.eval.endpoint import ChatEndpoint
            from vlminterp.eval.http_judge import EndpointJudge

            safe_name = re.sub(r"[^\w.-]", "_", self.preset)
            default = Path("~/.cache/vlminterp/judges").expanduser() / f"{safe_name}.jsonl"
            cache = cache or os.environ.get("VLMINTERP_JUDGE_CACHE") or default
            return EndpointJudge(ChatEndpoint(self.preset, cache=cache), self.prompt_set, name=self.name)
        return KeywordJudge.preset(self.preset, self.judges_dir)
