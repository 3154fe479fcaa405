"""Obtaining the raw Debian files behind the offline corpora.

Two ways, both ending in one directory that holds three plain-text files:

* ``de-en``: the Ding dictionary from the `trans-de-en` package,
* ``Translation-en`` / ``Translation-de``: the DDTP description translations.

1. Through apt (Debian/Ubuntu, as root or with a writable apt cache):
   `apt-get download trans-de-en` + `dpkg-deb -x`, and `apt-get update` under a
   *private* apt configuration whose list directory lives in our cache (the
   system's apt state is never touched), then `apt-helper cat-file` to
   decompress the lists.
2. By hand: the user drops the three files into a directory and points
   ``SPEC_CASCADE_RAW_DIR`` (or the gin binding
   ``offline_settings.raw_dir``) at it. ``.gz``/``.bz2``/``.xz`` versions are
   accepted as well.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from absl import logging

RAW_FILES = ("de-en", "Translation-en", "Translation-de")
_PROVENANCE = "provenance.json"
_DING_IN_DEB = pathlib.Path("usr/share/trans/de-en")
# Lists of a release's main component, e.g. "..._dists_bookworm_main_i18n_
# Translation-en.lz4"; suites with a dash (-updates, -security) are left out so
# that the corpus follows the release, not its stream of point updates.
_LIST_RE = re.compile(r"_dists_([^_-]+)_main_i18n_Translation-(en|de)(\.[a-z0-9]+)?$")

MANUAL_INSTRUCTIONS = """\
Provide the three raw files by hand instead:
  1. `de-en`: the Ding dictionary. Download the Debian package `trans-de-en`
     (any Debian mirror, pool/main/t/trans-de-en/, or `apt-get download
     trans-de-en` on a Debian machine) and extract `usr/share/trans/de-en`
     (`dpkg-deb -x trans-de-en_*.deb out/`, or `ar x` then `tar xf data.tar.xz`).
  2. `Translation-en` and `Translation-de`: from a Debian mirror's
     dists/bookworm/main/i18n/ directory (Translation-en.bz2 / -de.bz2; keeping
     the .bz2/.gz/.xz ending is fine).
  3. Put them in one directory and set SPEC_CASCADE_RAW_DIR=/that/dir (or bind
     gin `offline_settings.raw_dir = "/that/dir"`), then run again."""


class RawDataError(RuntimeError):
  """The raw files could not be obtained; the message says how to fix it."""


def sha256_file(path: os.PathLike) -> str:
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _open_any(path: pathlib.Path):
  opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix)
  if opener is not None:
    return opener(path, "rb")
  return open(path, "rb")


def _find_manual_file(raw_dir: pathlib.Path, name: str) -> pathlib.Path | None:
  for suffix in ("", ".gz", ".bz2", ".xz"):
    candidate = raw_dir / (name + suffix)
    if candidate.is_file():
      return candidate
  return None


def from_manual_dir(raw_dir: os.PathLike, dest: os.PathLike) -> dict[str, Any]:
  """Copies (decompressing) the user's raw files into `dest`.

  Returns:
    provenance: {"mode": "manual", "raw_dir", "files": {name: {"from", "sha256"}}}.

  Raises:
    RawDataError: when a file is missing, naming the ones that are.
  """
  raw_dir = pathlib.Path(raw_dir).expanduser()
  dest = pathlib.Path(dest)
  if not raw_dir.is_dir():
    raise RawDataError(
        f"SPEC_CASCADE_RAW_DIR / offline_settings.raw_dir points to {raw_dir}, "
        f"which is not a directory.\n{MANUAL_INSTRUCTIONS}")
  found = {name: _find_manual_file(raw_dir, name) for name in RAW_FILES}
  missing = [name for name, path in found.items() if path is None]
  if missing:
    raise RawDataError(
        f"{raw_dir} lacks {', '.join(missing)} (looked for the plain name and "
        f".gz/.bz2/.xz).\n{MANUAL_INSTRUCTIONS}")
  files = {}
  for name, path in found.items():
    with _open_any(path) as src, open(dest / name, "wb") as out:
      shutil.copyfileobj(src, out)
    files[name] = {"from": str(path), "sha256": sha256_file(dest / name)}
  return {"mode": "manual", "raw_dir": str(raw_dir), "files": files}


def _run(cmd: list[str], cwd: os.PathLike | None = None) -> str:
  try:
    result = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
  except subprocess.CalledProcessError as e:
    raise RawDataError(
        f"`{' '.join(cmd)}` failed (exit {e.returncode}):\n{e.stderr.strip()[-2000:]}\n"
        f"Check network access to the Debian archive, or:\n{MANUAL_INSTRUCTIONS}"
    ) from e
  return result.stdout


def _require_tools() -> None:
  missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
  if not os.path.exists("/usr/lib/apt/apt-helper"):
    missing.append("/usr/lib/apt/apt-helper")
  if missing:
    raise RawDataError(
        f"Cannot fetch the offline corpora automatically: {', '.join(missing)} "
        f"not found (this is not a Debian/Ubuntu system with apt).\n"
        f"{MANUAL_INSTRUCTIONS}")


def _fetch_ding(work: pathlib.Path, dest: pathlib.Path) -> dict[str, Any]:
  _run(["apt-get", "download", "trans-de-en"], cwd=work)
  debs = sorted(work.glob("trans-de-en_*.deb"))
  if not debs:
    raise RawDataError(f"`apt-get download trans-de-en` left no .deb in {work}.\n"
                       f"{MANUAL_INSTRUCTIONS}")
  deb = debs[-1]
  version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
  extracted = work / "trans-de-en"
  _run(["dpkg-deb", "-x", str(deb), str(extracted)])
  shutil.copyfile(extracted / _DING_IN_DEB, dest / "de-en")
  return {"package": "trans-de-en", "version": version, "deb": deb.name,
          "deb_sha256": sha256_file(deb)}


def _fetch_ddtp(apt_dir: pathlib.Path, dest: pathlib.Path) -> dict[str, Any]:
  lists = apt_dir / "lists"
  (lists / "partial").mkdir(parents=True, exist_ok=True)
  conf = apt_dir / "apt.conf"
  # Our own list and cache directories: `apt-get update` must not rewrite the
  # system's package lists or binary caches.
  conf.write_text(
      "#clear Acquire::Languages;\n"
      'Acquire::Languages { "en"; "de"; };\n'
      f'Dir::State::Lists "{lists}/";\n'
      f'Dir::Cache "{apt_dir}/cache/";\n'
      'Dir::Cache::pkgcache "";\n'
      'Dir::Cache::srcpkgcache "";\n')
  (apt_dir / "cache").mkdir(exist_ok=True)
  _run(["apt-get", "-c", str(conf), "update"])
  used: dict[str, list[str]] = {"en": [], "de": []}
  for path in sorted(lists.iterdir()):
    match = _LIST_RE.search(path.name)
    if match:
      used[match.group(2)].append(path.name)
  for lang, names in used.items():
    if not names:
      raise RawDataError(
          f"`apt-get update` produced no Translation-{lang} list in {lists} "
          f"(files: {sorted(p.name for p in lists.iterdir())}).\n{MANUAL_INSTRUCTIONS}")
    with open(dest / f"Translation-{lang}", "wb") as out:
      for name in names:
        out.write(subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", str(lists / name)],
            check=True, capture_output=True).stdout)
        out.write(b"\n")
  releases = sorted(p.name for p in lists.iterdir()
                    if p.name.endswith(("InRelease", "_Release")))
  return {"lists": used, "release_files": releases,
          "release_dates": _release_dates(lists, releases)}


def _release_dates(lists: pathlib.Path, releases: list[str]) -> dict[str, str]:
  dates = {}
  for name in releases:
    for line in (lists / name).read_text(errors="replace").splitlines():
      if line.startswith("Date:"):
        dates[name] = line[5:].strip()
        break
  return dates


def from_apt(dest: os.PathLike, apt_dir: os.PathLike) -> dict[str, Any]:
  """Fetches the raw files through apt into `dest`.

  Args:
    dest: directory that receives `de-en`, `Translation-en`, `Translation-de`.
    apt_dir: directory for the private apt lists/config (kept between runs).

  Returns:
    provenance: {"mode": "apt", "ding": {...version...}, "ddtp": {...lists...},
    "files": {name: {"sha256"}}}.

  Raises:
    RawDataError: apt is missing or a command failed; says how to proceed.
  """
  _require_tools()
  dest = pathlib.Path(dest)
  apt_dir = pathlib.Path(apt_dir)
  with tempfile.TemporaryDirectory(prefix="trans-de-en-") as work:
    # `apt-get download` runs as the `_apt` user when it can; a world-readable
    # directory avoids its "unsandboxed" fallback warning.
    os.chmod(work, 0o755)
    ding = _fetch_ding(pathlib.Path(work), dest)
  ddtp = _fetch_ddtp(apt_dir, dest)
  files = {name: {"sha256": sha256_file(dest / name)} for name in RAW_FILES}
  return {"mode": "apt", "ding": ding, "ddtp": ddtp, "files": files}


def obtain(raw_cache: os.PathLike, apt_dir: os.PathLike,
           manual_dir: os.PathLike | None = None, refresh: bool = False) -> pathlib.Path:
  """Returns a directory holding verified raw files, fetching them if needed.

  The fetched files are kept in `raw_cache` with a provenance record (sha256 of
  every file) so that rebuilding the corpora needs no network. A cached copy
  whose hashes do not match is discarded and fetched again.

  Args:
    raw_cache: where fetched/copied raw files live.
    apt_dir: private apt state for `from_apt`.
    manual_dir: user-provided raw files (take precedence over apt).
    refresh: fetch again even if a verified copy exists.
  """
  raw_cache = pathlib.Path(raw_cache)
  if not refresh and _verified(raw_cache, manual_dir):
    return raw_cache
  if raw_cache.exists():
    _discard(raw_cache)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".raw-", dir=raw_cache.parent))
  try:
    if manual_dir is not None:
      logging.info("Reading raw corpus files from %s", manual_dir)
      provenance = from_manual_dir(manual_dir, staging)
    else:
      logging.info("Fetching trans-de-en and the DDTP Translation-en/-de lists via apt")
      provenance = from_apt(staging, apt_dir)
    (staging / _PROVENANCE).write_text(json.dumps(provenance, indent=1, sort_keys=True))
    if raw_cache.exists():  # a concurrent fetch finished first
      _discard(raw_cache)
    os.rename(staging, raw_cache)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return raw_cache


def _discard(directory: pathlib.Path) -> None:
  # Renamed first so that a half-deleted tree is never read as raw files.
  trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}-{time.time_ns()}")
  os.rename(directory, trash)
  shutil.rmtree(trash, ignore_errors=True)


def provenance(raw_cache: os.PathLike) -> dict[str, Any]:
  """The provenance record written by `obtain`."""
  return json.loads((pathlib.Path(raw_cache) / _PROVENANCE).read_text())


def _verified(raw_cache: pathlib.Path, manual_dir: os.PathLike | None) -> bool:
  try:
    record = provenance(raw_cache)
  except (OSError, ValueError):
    return False
  # User-provided files are re-read every time: they may have changed.
  if manual_dir is not None or record.get("mode") != "apt":
    return False
  for name in RAW_FILES:
    path = raw_cache / name
    expected = record.get("files", {}).get(name, {}).get("sha256")
    if not path.is_file() or sha256_file(path) != expected:
      logging.warning("Cached raw file %s is missing or corrupt; fetching again.", path)
      return False
  return True
