"""The small Pi0 directory that scripts/make_pi0_libero.py writes, and the hash check of its files.

Two ship (docs/finetune_pi0.md, "A small Pi0 made here"): dsrl/assets/pi0_libero_cpu, the
`libero_pi0_cpu` preset's base, and dsrl/assets/pi0_libero_cpu_band, whose base rates are in the
proof's band; a run names them "libero_cpu" / "libero_cpu_band" (`SHIPPED`) and reads any other
such directory given as `base_policy.checkpoint` (`is_made`).

`scripts/make_pi0_libero.py` makes it: scripted demonstrations of libero_object task 8 recorded in
LeRobot's layout, fine-tuned into a `mini` Pi0 (`Pi0Config.mini`) by `scripts/finetune_pi0.py`.
The directory is an openpi checkpoint (`params/` + `assets/libero_cpu/norm_stats.json`) plus the
SentencePiece `tokenizer.model`, `config.json` (what to load it with, and how it was made) and
`SHA256SUMS` (every other file's sha256, checked before loading).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

_ASSETS = pathlib.Path(__file__).resolve().parents[2] / "assets"
# The preset's base: 0.80 with i.i.d. noise, 0.34 with the zero latent (run mk2).
LIBERO_CPU_DIR = _ASSETS / "pi0_libero_cpu"
# The make inside the proof's band: 0.34 / 0.02 (run mk7, the maker's defaults).
LIBERO_CPU_BAND_DIR = _ASSETS / "pi0_libero_cpu_band"
# The names a run's `base_policy.checkpoint` takes for them.
SHIPPED = {"libero_cpu": LIBERO_CPU_DIR, "libero_cpu_band": LIBERO_CPU_BAND_DIR}
SUMS_FILE = "SHA256SUMS"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SUMS_FILE)


def write_sha256sums(directory: str | pathlib.Path) -> pathlib.Path:
    """Writes `SHA256SUMS` (sha256sum's format, paths relative to `directory`)."""
    directory = pathlib.Path(directory)
    lines = [f"{_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in _files(directory)]
    path = directory / SUMS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_sha256sums(directory: str | pathlib.Path) -> None:
    """Raises ValueError naming the first file that is missing, extra or changed."""
    directory = pathlib.Path(directory)
    sums = directory / SUMS_FILE
    if not sums.is_file():
        raise FileNotFoundError(
            f"{sums} is missing: {directory} is not a complete shipped Pi0 (re-clone, or remake "
            "it with scripts/make_pi0_libero.py)."
        )
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    actual = {p.relative_to(directory).as_posix(): p for p in _files(directory)}
    for name, digest in expected.items():
        if name not in actual:
            raise ValueError(f"{directory / name} is missing (listed in {sums}).")
        if _sha256(actual[name]) != digest:
            raise ValueError(
                f"{directory / name} does not match its sha256 in {sums}: the file is damaged "
                "or was replaced; restore it (git checkout) or remake the asset."
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise ValueError(f"{directory} holds files not in {sums}: {extra}; remove them.")


def is_made(directory: str | pathlib.Path) -> bool:
    """Whether `directory` is one that make_pi0_libero.py wrote (its `config.json` and
    `SHA256SUMS` beside the openpi checkpoint), so `load` knows how to read it: a run's
    `base_policy.checkpoint=<that directory>` needs no robot or variant."""
    directory = pathlib.Path(directory)
    return (directory / "config.json").is_file() and (directory / SUMS_FILE).is_file()


def read_config(directory: str | pathlib.Path) -> dict[str, Any]:
    return json.loads((pathlib.Path(directory) / "config.json").read_text())


def load(directory: str | pathlib.Path = LIBERO_CPU_DIR, *, num_steps: int | None = None, **kw):
    """A made small Pi0 as a `Pi0Policy`, after checking every file's hash. `kw` go to
    `Pi0Policy.from_checkpoint` (e.g. Pi0Config overrides)."""
    from dsrl.base_policies.pi0.policy import Pi0Policy

    directory = pathlib.Path(directory)
    verify_sha256sums(directory)
    config = read_config(directory)
    return Pi0Policy.from_checkpoint(
        directory,
        robot=config["robot"],
        variant=config["variant"],
        dtype="float32",
        tokenizer_path=directory / "tokenizer.model",
        asset_id=config["asset_id"],
        num_steps=int(num_steps or config["num_steps"]),
        shared_noise=bool(config.get("shared_noise", False)),
        **kw,
    )
