"""MM-SafetyBench: ``data/processed_questions/{scenario}.json`` + ``imgs/{scenario}/{SD,SD_TYPO,TYPO}/{id}.jpg``.

Splits are the benchmark's variants, each with its own query field:

=============  ==========================  =================
split          query field                 image
=============  ==========================  =================
``SD``         ``Rephrased Question(SD)``  ``SD/{id}.jpg``
``SD_TYPO``    ``Rephrased Question``      ``SD_TYPO/{id}.jpg``
``TYPO``       ``Rephrased Question``      ``TYPO/{id}.jpg``
``Text_only``  ``Question``                none
=============  ==========================  =================

Ids are the files' own string keys (not contiguous in 05 and 08). ``scenarios=`` picks scenarios by
full name (``"01-Illegal_Activitiy"``, the original spelling), number (``"01"``, ``1``) or name
(``"Illegal_Activitiy"``); ``tiny=True`` keeps ``TinyVersion_ID_List.json``'s 168 ids. With
``on_missing="generate"``, missing TYPO images are drawn from ``Key Phrase`` by
:func:`~vlminterp.data.typography.mmsb_typo_image` (SD and SD_TYPO images cannot be generated).

Example:
    >>> from vlminterp import data
    >>> s = data.load("mm-safetybench", "MM-SafetyBench", split="TYPO", scenarios=["01"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, find_dir, read_json
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.data.typography import mmsb_typo_image
from vlminterp.prompts import Sample

SCENARIOS = (
    "01-Illegal_Activitiy",
    "02-HateSpeech",
    "03-Malware_Generation",
    "04-Physical_Harm",
    "05-EconomicHarm",
    "06-Fraud",
    "07-Sex",
    "08-Political_Lobbying",
    "09-Privacy_Violence",
    "10-Legal_Opinion",
    "11-Financial_Advice",
    "12-Health_Consultation",
    "13-Gov_Decision",
)
FIELDS = (
    "Question",
    "GPT-Pred",
    "Changed Question",
    "Key Phrase",
    "Phrase Type",
    "Rephrased Question",
    "Rephrased Question(SD)",
)
QUERY_FIELD = {
    "SD": "Rephrased Question(SD)",
    "SD_TYPO": "Rephrased Question",
    "TYPO": "Rephrased Question",
    "Text_only": "Question",
}


def scenario_name(value: str | int) -> str:
    """The full scenario name for ``"01"``, ``1``, ``"Illegal_Activitiy"`` or the full name."""
    key = str(value).strip()
    for s in SCENARIOS:
        number, name = s.split("-", 1)
        if key in (s, name) or (key.isdigit() and int(key) == int(number)):
            return s
    raise ValueError(f"Unknown MM-SafetyBench scenario {value!r}. Valid scenarios: {list(SCENARIOS)}.")


def _tiny_ids(root: Path) -> dict[str, set[str]]:
    path = root / "TinyVersion_ID_List.json"
    if not path.is_file():
        raise FileNotFoundError(f"tiny=True needs {path} (MM-SafetyBench's TinyVersion_ID_List.json).")
    ids: dict[str, set[str]] = {}
    for i, entry in enumerate(read_json(path, list)):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise DatasetFormatError(path, where, None, "is not an object")
        ids[field(entry, "Scenario", str, path, where)] = {
            str(x) for x in field(entry, "Sampled_ID_List", list, path, where)
        }
    return ids


def _typo_renderer(font: str | Path | None):
    def render(sample: Sample):
        if sample.meta["variant"] != "TYPO":
            return None
        phrase = sample.meta["Key Phrase"]
        return f"mmsb-typo|{font}|{phrase}", lambda: mmsb_typo_image(phrase, font=font)

    return render


def parse(
    root: Path,
    split: str,
    *,
    scenarios: Sequence[str | int] | None = None,
    tiny: bool = False,
    image_root: str | Path | None = None,
    font: str | Path | None = None,
) -> Parsed:
    """Parse the chosen scenarios of one variant (``split``); ``font`` is used for generated TYPO images."""
    questions = root / "data" / "processed_questions"
    if not questions.is_dir():
        raise FileNotFoundError(
            f"MM-SafetyBench: {questions} does not exist; pass the benchmark's repository folder as root."
        )
    chosen = [scenario_name(s) for s in scenarios] if scenarios is not None else list(SCENARIOS)
    keep = _tiny_ids(root) if tiny else None
    images = find_dir(root, image_root, ["data/imgs", "imgs"])
    query_field = QUERY_FIELD[split]
    samples = []
    for scenario in chosen:
        path = questions / f"{scenario}.json"
        if not path.is_file():
            raise FileNotFoundError(f"MM-SafetyBench: scenario file {path} does not exist.")
        for key, entry in read_json(path, dict).items():
            where = f"entry {key!r}"
            if not isinstance(entry, dict):
                raise DatasetFormatError(path, where, None, "is not an object")
            meta = {name: field(entry, name, str, path, where) for name in FIELDS}
            if keep is not None and key not in keep.get(scenario, set()):
                continue
            image = None if split == "Text_only" else images / scenario / split / f"{key}.jpg"
            meta.update(scenario=scenario, question_id=key, variant=split)
            samples.append(
                Sample(
                    id=f"{scenario}/{key}", query=meta[query_field], image=image, label="harmful", meta=meta
                )
            )
    return Parsed(samples, None if split == "Text_only" else images, _typo_renderer(font))


register(
    DatasetSpec(
        "mm-safetybench",
        parse,
        tuple(QUERY_FIELD),
        "MM-SafetyBench, 13 scenarios × (SD, SD_TYPO, TYPO, Text_only) (ShiftDC)",
    )
)
