"""Shared helpers of the benchmarks: shapes and options, timing, the JSON result line.

Every benchmark takes the same options (:func:`parse_args`):

- ``--quick``: a 4.5M-parameter llava (seconds per variant); default: the mid-size ~100M llava;
  ``--shapes llava-7b``: llava-1.5-7b's shapes with random weights (GPU only: ~30 GB of RAM and disk
  to build the float32 checkpoint, float16 on the device);
- ``--device cuda``: run on a GPU (timings synchronise the device);
- ``--repeats N``: timed repeats per variant (interleaved, median);
- ``--record FILE``: also append the JSON line to ``FILE`` (``benchmarks/results/*.jsonl``);
- ``--checkpoint DIR``: build the random checkpoint into a subfolder of ``DIR`` (one per shapes)
  once and load it from there in later runs (``benchmarks/gpu.sh`` builds llava-7b's once for the
  four benchmarks);
- ``--malloc both`` (default for the benchmarks that call :func:`run_policies`): measure twice, each
  time in a fresh process without ``MALLOC_*_`` variables, once with the library's malloc default
  (the ``mallopt`` tuning of ``import vlminterp``, :mod:`vlminterp.malloc`) and once with glibc's
  (``VLMINTERP_MALLOC=0``); ``--malloc current``: measure once, in this process as it is.

The last line printed is one JSON object ``{"benchmark", "ratios", "ms", "ms_per_token", "targets",
"config"}``; ``ms`` holds absolute median milliseconds per variant, ``ms_per_token`` the same divided
by the prompt tokens of one variant's run, and ``config`` the shapes, the device, the versions
(torch, transformers, transformer_lens, vlminterp), the thread count, the run's wall time, the load
average and the malloc settings (:func:`vlminterp.malloc.malloc_settings`). With ``--malloc both``
the line is the library default's, plus ``"glibc": {"ratios", "ms", "ms_per_token", "malloc",
"wall_s"}`` from the ``VLMINTERP_MALLOC=0`` process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

_START = time.monotonic()  # import time of this module: the benchmark's start, for ``wall_s``

#: Sizes of the benchmark llava: about 100M parameters (mid) and a quick variant (4.5M).
LLAVA_100M = dict(
    d_model=768,
    n_layers=12,
    n_heads=12,
    n_kv_heads=12,
    d_mlp=3072,
    vision_d_model=256,
    image_size=224,
    patch_size=14,
)
LLAVA_QUICK = dict(
    d_model=256,
    n_layers=4,
    n_heads=8,
    n_kv_heads=8,
    d_mlp=1024,
    vision_d_model=64,
    image_size=224,
    patch_size=14,
)
#: llava-1.5-7b's shapes: Llama-2-7B decoder, CLIP ViT-L/14 at 336 px (576 image tokens). The tiny
#: builder's vision tower has 2 heads and a 2x MLP (ViT-L: 16 heads, 4x), so the vision cost is
#: somewhat under the real one; the decoder, which dominates, is exact (with the real Llama-2 tokenizer).
LLAVA_7B = dict(
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=32,
    d_mlp=11008,
    vision_d_model=1024,
    vision_layers=24,
    image_size=336,
    patch_size=14,
)
SHAPES = {"quick": LLAVA_QUICK, "mid": LLAVA_100M, "llava-7b": LLAVA_7B}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LLAMA2_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "llama2"


def parse_args(description: str, argv: list[str] | None, extra: Callable | None = None) -> argparse.Namespace:
    """The common options; ``args.shapes`` ("quick", "mid" or "llava-7b") and ``args.sizes`` are resolved.

    Args:
        description: The benchmark's docstring.
        argv: Command-line arguments (None: ``sys.argv``).
        extra: Adds the benchmark's own options to the parser.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="the 4.5M-parameter model (same as --shapes quick)"
    )
    parser.add_argument("--shapes", choices=sorted(SHAPES), default=None, help="model shapes (default: mid)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="weights and activations (default: float16 for llava-7b, float32 otherwise);\n"
        "--quick --dtype float16 on a CPU rehearses the GPU run's half-precision paths",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant")
    parser.add_argument("--record", type=Path, default=None, help="append the JSON line to this file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a folder for the random checkpoints (one subfolder per shapes): built once, reused\n"
        "by later runs (llava-7b's float32 checkpoint is ~28 GB: build it once for all four benchmarks)",
    )
    parser.add_argument(
        "--malloc",
        choices=("both", "current"),
        default="both",
        help="both: one fresh process with the library's malloc default, one with VLMINTERP_MALLOC=0;\n"
        "current: this process only",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.quick and args.shapes not in (None, "quick"):
        parser.error(f"--quick contradicts --shapes {args.shapes}.")
    args.shapes = "quick" if args.quick else args.shapes or "mid"
    args.quick = args.shapes == "quick"
    if args.shapes == "llava-7b" and not str(args.device).startswith("cuda"):
        parser.error("--shapes llava-7b is for a GPU (float16, ~14 GB of weights): add --device cuda.")
    args.sizes = SHAPES[args.shapes]
    args.dtype = DTYPES[args.dtype or ("float16" if args.shapes == "llava-7b" else "float32")]
    return args


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per function, timing them round-robin so machine noise hits all alike.

    Args:
        fns: Variant name -> the work to time.
        repeats: Timed runs of each variant.
        warmup: Run each once, untimed, first (skip when the caller has already run them).
        device: The device to synchronise before reading the clock.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_info(args: argparse.Namespace) -> dict:
    """What every JSON line records: shapes, time, load, device, threads, malloc settings and versions."""
    from importlib.metadata import PackageNotFoundError, version

    from vlminterp.malloc import malloc_settings

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return {
        "shapes": args.shapes,
        "quick": args.quick,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - _START),  # the whole run: model build, warm-up, repeats
        "load_avg_1m": round(os.getloadavg()[0], 2),  # at the end of the run: how shared the machine was
        "device": str(args.device),
        "dtype": str(args.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "malloc": malloc_settings(),
        "versions": {d: installed(d) for d in ("torch", "transformers", "transformer-lens", "vlminterp")},
        **args.sizes,
    }


def emit(
    args: argparse.Namespace,
    benchmark: str,
    ratios: dict[str, float],
    seconds: dict[str, float],
    targets: dict[str, float],
    config: dict,
    tokens: int | None = None,
) -> dict:
    """Print the convention's last line (one JSON object) and append it to ``args.record`` if given.

    Args:
        tokens: Prompt tokens one variant's timed run processes (``ms_per_token`` = ms / tokens); the
            variants whose work differs (prompt building) are divided by the same count.
    """
    line = {
        "benchmark": benchmark,
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
        **({"ms_per_token": {k: round(v * 1e3 / tokens, 4) for k, v in seconds.items()}} if tokens else {}),
        "targets": targets,
        "config": {**run_info(args), **({"tokens": tokens} if tokens else {}), **config},
    }
    write_line(args, line)
    return line


def write_line(args: argparse.Namespace, line: dict) -> None:
    """Print ``line`` as the last JSON line and append it to ``args.record`` when given."""
    text = json.dumps(line)
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a") as f:
            f.write(text + "\n")
    print(text, flush=True)


#: The ``MALLOC_*_`` environment the Makefile exports (glibc reads it at process start).
MAKEFILE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}
#: Malloc policies a benchmark process can run under (:func:`policy_env`).
POLICIES = ("makefile", "library", "glibc")


def policy_env(policy: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark process under ``policy``.

    ``makefile``: the Makefile's ``MALLOC_*_`` variables; ``library``: none of them, so ``import
    vlminterp`` applies its ``mallopt`` tuning (a plain Python process or a Jupyter kernel);
    ``glibc``: none and ``VLMINTERP_MALLOC=0`` (glibc's own defaults).

    Example:
        >>> env = policy_env("glibc", {"MALLOC_TOP_PAD_": "1", "PATH": "/bin"})
        >>> env == {"PATH": "/bin", "VLMINTERP_MALLOC": "0"}
        True
    """
    from vlminterp.malloc import ENV_VARS

    if policy not in POLICIES:
        raise ValueError(f"Unknown malloc policy {policy!r}; choose from {list(POLICIES)}.")
    base = os.environ if environ is None else environ
    env = {k: v for k, v in base.items() if k not in ENV_VARS and k != "VLMINTERP_MALLOC"}
    if policy == "makefile":
        env.update(MAKEFILE_ENV)
    elif policy == "glibc":
        env["VLMINTERP_MALLOC"] = "0"
    return env


def run_in_process(script: str | Path, argv: list[str], policy: str) -> tuple[dict, str]:
    """Run ``script argv`` in a fresh process under ``policy``: its JSON line and the text printed before.

    Raises:
        RuntimeError: the process failed (its stderr's end is included).
    """
    proc = subprocess.run(
        [sys.executable, str(script), *argv], env=policy_env(policy), capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(
            f"{Path(script).name} under malloc policy {policy!r} failed:\n{proc.stderr[-3000:]}"
        )
    *table, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(table)


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the valued ``options`` (``--opt value`` and ``--opt=value``).

    Example:
        >>> _without(["--quick", "--record", "r.jsonl", "--malloc=both"], ("--record", "--malloc"))
        ['--quick']
    """
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in options)):
            out.append(arg)
    return out


def run_policies(args: argparse.Namespace, script: str | Path, argv: list[str] | None) -> dict:
    """The benchmark measured in two fresh processes, library malloc default and ``VLMINTERP_MALLOC=0``.

    Each process gets ``argv`` with ``--malloc current`` and without ``--record``; the merged line
    (the library default's, plus ``"glibc"``) is printed and recorded here.
    """
    child = _without(list(sys.argv[1:] if argv is None else argv), ("--record", "--malloc"))
    child += ["--malloc", "current"]
    lines = {}
    for policy in ("library", "glibc"):
        lines[policy], table = run_in_process(script, child, policy)
        print(f"--- malloc: {policy} ---\n{table}", flush=True)
    line, glibc = lines["library"], lines["glibc"]
    line["glibc"] = {
        "ratios": glibc["ratios"],
        "ms": glibc["ms"],
        **({"ms_per_token": glibc["ms_per_token"]} if "ms_per_token" in glibc else {}),
        "malloc": glibc["config"]["malloc"],
        "wall_s": glibc["config"]["wall_s"],
    }
    line["config"]["wall_s"] = round(time.monotonic() - _START)  # both processes
    line["config"]["load_avg_1m"] = round(os.getloadavg()[0], 2)
    write_line(args, line)
    return line


#: Name prefix of the checkpoints ``--checkpoint DIR`` holds (their staging folders: with a dot).
CHECKPOINT_PREFIX = "bench-llava-"


def checkpoint_dir(args: argparse.Namespace, path: Path) -> Path:
    """The random llava of ``args.shapes`` in the checkpoint folder ``path``: built there unless it already is.

    ``path`` holds one subfolder per shapes and sizes (``bench-llava-<shapes>-<digest>``; e.g.
    ``bench_collect --quick`` uses smaller images than the other quick benchmarks), so the four
    benchmarks of a GPU run share llava-7b's one build. The build goes to a staging folder renamed
    into place (:func:`vlminterp.testing.tiny.staged_build`), with a ``bench_shapes.json`` naming the
    shapes, so an interrupted build leaves nothing that a rerun would mistake for a checkpoint.

    Raises:
        ValueError: ``path`` holds files of its own (``benchmarks/gpu.sh`` deletes what this
            folder holds), or a checkpoint whose ``bench_shapes.json`` says other shapes.
    """
    from vlminterp.testing import build_tiny_vlm
    from vlminterp.testing.tiny import staged_build

    key = {"shapes": args.shapes, "sizes": args.sizes, "seed": 0}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    target = path / f"{CHECKPOINT_PREFIX}{args.shapes}-{digest}"
    foreign = (
        [p.name for p in path.iterdir() if not p.name.lstrip(".").startswith(CHECKPOINT_PREFIX)]
        if path.is_dir()
        else []
    )
    if foreign or path.is_file():
        what = ", ".join(sorted(foreign)[:3]) or "a file"
        raise ValueError(
            f"--checkpoint {str(path)!r} holds files of its own ({what}); "
            "pass a new or empty folder for the benchmark checkpoints."
        )
    marker = target / "bench_shapes.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != key:
            raise ValueError(
                f"{str(target)!r} holds the benchmark llava of other shapes "
                f"({marker.read_text().strip()}); delete it."
            )
        return target
    options = {"tokenizer_dir": LLAMA2_TOKENIZER} if args.shapes == "llava-7b" else {}

    def build(staging: Path) -> None:
        build_tiny_vlm("llava", staging, seed=0, **options, **args.sizes)
        (staging / "bench_shapes.json").write_text(json.dumps(key) + "\n")

    return staged_build(target, build)


def build_models(args: argparse.Namespace, with_hf: bool = True):
    """A random llava of ``args.sizes`` loaded as HookedVLM and (optionally) as an independent HF model.

    On ``--shapes llava-7b`` the real Llama-2 tokenizer is used (real vocabulary) and both models are
    float16 on the device. The checkpoint is built in a temporary folder, or with ``--checkpoint
    DIR`` once into a subfolder of ``DIR`` and read from there by every later run (:func:`checkpoint_dir`).

    Returns:
        ``(model, hf_or_None, n_params)``; the HF model uses eager attention, like the bridge.
    """
    from transformers import LlavaForConditionalGeneration

    from vlminterp import HookedVLM

    dtype = args.dtype
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint_dir(args, Path(args.checkpoint) if args.checkpoint else Path(tmp) / "bench")
        model = HookedVLM.from_pretrained(path, device=args.device, dtype=dtype)
        hf = (
            LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager", dtype=dtype)
            .to(args.device)
            .eval()
            if with_hf
            else None
        )
    return model, hf, sum(p.numel() for p in model.hf_model.parameters())


def hf_inputs(batch, device: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """``(input_ids, kwargs)`` of a PromptBatch for a raw HF forward on ``device`` (floats in ``dtype``)."""
    kwargs = {
        k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
        for k, v in batch.model_kwargs().items()
    }
    return batch.input_ids.to(device), kwargs
