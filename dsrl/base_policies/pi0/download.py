"""Resolve openpi checkpoint / tokenizer URLs to openpi's local cache, downloading if possible.

Cache layout (shared with openpi itself): `$OPENPI_DATA_HOME` (default `~/.cache/openpi`), then
`<bucket>/<path>`:
  gs://openpi-assets/checkpoints/pi0_libero -> <cache>/openpi-assets/checkpoints/pi0_libero
  gs://big_vision/paligemma_tokenizer.model -> <cache>/big_vision/paligemma_tokenizer.model
Legacy `s3://openpi-assets/...` URLs (the DSRL reference scripts) map to the same place.

A path already in the cache is used as is, so machines without network work once the files are
copied there. Otherwise we try `gsutil` (openpi's route for the public bucket), then `gcsfs`;
without network the error lists exactly which files to put where.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import urllib.parse

OPENPI_DATA_HOME = "OPENPI_DATA_HOME"
DEFAULT_CACHE_DIR = "~/.cache/openpi"
TOKENIZER_URL = "gs://big_vision/paligemma_tokenizer.model"
CHECKPOINT_URL = "gs://openpi-assets/checkpoints/{name}"


class DownloadError(FileNotFoundError):
    """A remote file is neither cached nor downloadable; the message says how to provide it."""


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(OPENPI_DATA_HOME, DEFAULT_CACHE_DIR)).expanduser().resolve()


def local_path(url: str) -> pathlib.Path:
    """Where openpi's cache keeps `url` (no I/O)."""
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme in ("", "file"):
        return pathlib.Path(parsed.path if parsed.scheme else url).expanduser().resolve()
    return cache_dir() / parsed.netloc / parsed.path.strip("/")


def tokenizer_path() -> pathlib.Path:
    return local_path(TOKENIZER_URL)


def _layout_help(url: str, dest: pathlib.Path) -> str:
    if url.rstrip("/").endswith(".model"):
        return (
            f"Put the PaliGemma SentencePiece file at\n  {dest}\n"
            f"(copy it from a machine with network: gsutil cp {url} {dest}; openpi issue #881: the "
            "bucket may need Google credentials)."
        )
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return (
        f"Put the checkpoint directory at\n  {dest}/\n"
        "with this tree (as in the bucket):\n"
        f"  {dest}/params/_METADATA, manifest.ocdbt, ocdbt.process_0/..., d/... (orbax, OCDBT)\n"
        f"  {dest}/assets/<asset_id>/norm_stats.json (e.g. asset_id physical-intelligence/libero "
        "for pi0_libero, lerobot/aloha_sim_transfer_cube_human for pi0_aloha_sim, droid for "
        "pi0_droid)\n"
        f"and the tokenizer at\n  {tokenizer_path()}\n"
        "On a machine with network: "
        f"gsutil -m cp -r gs://openpi-assets/checkpoints/{name} {dest.parent}/ "
        f"(or set {OPENPI_DATA_HOME} to a directory that already holds them)."
    )


def _network_up(host: str = "storage.googleapis.com", timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _download(url: str, dest: pathlib.Path, timeout_s: float) -> None:
    partial = dest.with_name(f"{dest.name}.partial.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    is_dir = not url.rstrip("/").endswith(".model")
    try:
        if shutil.which("gsutil") is not None:
            if is_dir:
                partial.mkdir(parents=True)
                cmd = ["gsutil", "-m", "cp", "-r", f"{url.rstrip('/')}/*", str(partial)]
            else:
                partial.parent.mkdir(parents=True, exist_ok=True)
                cmd = ["gsutil", "cp", url, str(partial)]
            subprocess.run(cmd, check=True, timeout=timeout_s, capture_output=True)
        else:
            import gcsfs  # optional; anonymous access to public buckets

            fs = gcsfs.GCSFileSystem(token="anon")
            partial.parent.mkdir(parents=True, exist_ok=True)
            fs.get(url, str(partial), recursive=is_dir)
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, dest)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.exists():
            partial.unlink()


def maybe_download(
    url: str, *, allow_download: bool = True, timeout_s: float = 3600.0
) -> pathlib.Path:
    """Local path of `url` (a local path, gs:// or s3:// URL), downloading it into the cache if
    needed and possible. Raises `DownloadError` naming the files to provide otherwise."""
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme in ("", "file"):
        path = local_path(url)
        if not path.exists():
            raise DownloadError(f"No file or directory at {path}.")
        return path
    if parsed.scheme not in ("gs", "s3"):
        raise ValueError(f"Unsupported URL scheme in {url!r}: use a local path, gs:// or s3://.")
    dest = local_path(url)
    if dest.exists():
        return dest
    # The legacy s3 bucket moved to GCS under the same name.
    gs_url = f"gs://{parsed.netloc}/{parsed.path.strip('/')}"
    reason = None
    if not allow_download:
        reason = "downloads are disabled (allow_download=False)"
    elif shutil.which("gsutil") is None and not _gcsfs_available():
        reason = "neither gsutil nor gcsfs is installed"
    elif not _network_up():
        reason = "storage.googleapis.com is unreachable (no network?)"
    if reason is None:
        try:
            _download(gs_url, dest, timeout_s)
            return dest
        except (subprocess.SubprocessError, OSError, ImportError) as e:
            reason = f"the download failed: {e}"
    raise DownloadError(
        f"{url} is not in the openpi cache and {reason}.\n{_layout_help(gs_url, dest)}"
    )


def _gcsfs_available() -> bool:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_checkpoint(name_or_url: str, **kwargs) -> pathlib.Path:
    """A checkpoint name ("pi0_libero"), gs:// / s3:// URL or local directory -> local directory."""
    s = str(name_or_url)
    if "://" not in s and not pathlib.Path(s).expanduser().exists() and "/" not in s:
        s = CHECKPOINT_URL.format(name=s)
    return maybe_download(s, **kwargs)


def resolve_tokenizer(path: str | pathlib.Path | None = None, **kwargs) -> pathlib.Path:
    """The PaliGemma tokenizer file: `path` if given, else the cached (or downloaded) one."""
    return maybe_download(str(path) if path is not None else TOKENIZER_URL, **kwargs)
