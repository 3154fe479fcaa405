"""T5X-style command lines for the gin-configured entry points (infer, sweep).

    python -m spec_cascade.sweep --gin_file=configs/paper/wmt_ende.gin \
        --gin.BATCH_SIZE=8 --gin.SWEEP_OUTPUT_DIR="'/tmp/run'" \
        [--gin_bindings='NAME = VALUE'] [--gin_search_paths=a,b] [--tfds_data_dir=DIR]

`--gin.NAME=VALUE` becomes the binding `NAME = VALUE` (string values keep their quotes:
`--gin.X="'text'"`). Gin files (and gin `include` lines) are found relative to the working
directory, the `--gin_search_paths`, then the folder holding the shipped `configs/` and that
`configs/` folder itself (so both `--gin_file=configs/runs/sweep.gin` and
`--gin_file=runs/sweep.gin` work). In a checkout that is the top-level `configs/`; an installed
wheel carries the same files as package data in `spec_cascade/configs/` (setup.py copies them in at build time),
so the same flags work from any working directory.

Every mistake is reported with the thing that caused it: a gin file that cannot be read or
parsed, a binding gin rejects (named as the user typed it), a `--gin.MACRO` no gin file uses
(almost always a typo), a `%gin.REQUIRED` macro left unset.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Sequence

import gin
import numpy as np

from spec_cascade import pod

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
# The package's own copy (a wheel install) wins when it exists: a checkout never has one, while
# next to an installed package REPO_ROOT is site-packages, whose `configs/` (if any) is not ours.
CONFIG_ROOT = (PACKAGE_DIR if os.path.isdir(os.path.join(PACKAGE_DIR, "configs"))
               else REPO_ROOT)
CONFIGS_DIR = os.path.join(CONFIG_ROOT, "configs")

_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FULL_PATH_BINDING = re.compile(r"^\s*(spec_cascade(?:\.\w+)*)\.\w+\.\w+\s*=")
_REQUIRED_RE = re.compile(r"(\w+)/macro\.value set to `%gin\.REQUIRED`")


class FlagError(ValueError):
  """A command-line or gin configuration mistake; the message says what and how to fix it."""


def setup_logging() -> None:
  """INFO logs of this package on stderr; the chatty libraries (orbax via absl, jax) at WARNING."""
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  for name in ("absl", "jax", "jax._src.xla_bridge", "orbax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _GinSearchFilter) for f in handler.filters):
      handler.addFilter(_GinSearchFilter())


class _GinSearchFilter(logging.Filter):
  """Drops gin's per-folder file-search lines ("Path not found: ..." for every search path
  tried): a file that is found needs no log, and one that is not becomes a FlagError."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not (msg.startswith("Path not found") or msg.startswith("system_path_file_exists"))


def _answer_no_on_type_error(exists: Callable[[str], bool]) -> Callable[[str], bool]:
  def checked(path: str) -> bool:
    try:
      return exists(path)
    except TypeError:
      return False
  checked.answers_no_on_type_error = True
  return checked


def _tolerate_folders_named_like_gin_paths() -> None:
  """gin also reads 'a/b/file.gin' as file.gin inside the importable package a.b, and its check
  raises TypeError (not False) when a.b is a namespace package, i.e. a plain folder on sys.path:
  a `runs/` folder in the working directory (sweep outputs go there) broke --gin_file=runs/...,
  and the checkout's `configs/` on sys.path broke `include 'configs/...'` from any other working
  directory. Such a folder holds no gin file the search paths would not find, so "no" is right."""
  for i, (reader, exists) in enumerate(gin.config._FILE_READERS):  # pylint: disable=protected-access
    if not getattr(exists, "answers_no_on_type_error", False):
      gin.config._FILE_READERS[i] = (reader, _answer_no_on_type_error(exists))  # pylint: disable=protected-access


def parse_flags(argv: Sequence[str], prog: str, description: str = "",
                extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
                pod_flags: bool = False) -> argparse.Namespace:
  """Parses T5X-style flags.

  Returns a Namespace with gin_file (list), gin_bindings (list of 'NAME = VALUE' strings),
  binding_sources (the flag each binding came from, same order), gin_search_paths (list),
  tfds_data_dir (str | None), plus whatever `extra_flags(parser)` adds and, with pod_flags,
  the multi-host flags (`pod.add_flags`; pass the Namespace to `start_pod`). Raises FlagError
  on anything it does not understand.
  """
  parser = argparse.ArgumentParser(prog=prog, description=description, add_help=True)
  if extra_flags is not None:
    extra_flags(parser)
  if pod_flags:
    pod.add_flags(parser)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable; later files override earlier ones)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding 'NAME = VALUE' (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated folders to look for gin files and includes in")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data folder for the paper tasks (may be gs://...)")
  args, rest = parser.parse_known_args(list(argv))
  args.binding_sources = [f"--gin_bindings={b}" for b in args.gin_bindings]
  for arg in rest:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name or not value.strip():
        raise FlagError(f"{arg!r}: write --gin.NAME=VALUE, e.g. --gin.BATCH_SIZE=8 or "
                        "--gin.SWEEP_OUTPUT_DIR=\"'/tmp/run'\" (strings need quotes).")
      args.gin_bindings.append(f"{name} = {value}")
      args.binding_sources.append(arg)
    elif arg in ("--alsologtostderr", "--logtostderr"):
      continue  # T5X habits; we always log to stderr.
    else:
      more = (", --multiprocess, --coordinator_address, --num_processes, --process_id, "
              "--pod_timeout_s" if pod_flags else "")
      raise FlagError(f"unrecognized argument {arg!r}. Flags: --gin_file, --gin.NAME=VALUE, "
                      f"--gin_bindings, --gin_search_paths, --tfds_data_dir{more}.")
  if not args.gin_file:
    raise FlagError(f"{prog} needs at least one --gin_file (e.g. configs/runs/sweep.gin).")
  args.gin_search_paths = [p for entry in args.gin_search_paths for p in entry.split(",") if p]
  return args


def _macro_refs(value: Any, out: set[str]) -> None:
  """Collects the names of macros (%NAME) referenced anywhere inside a gin value."""
  if isinstance(value, gin.config.ConfigurableReference):
    text = repr(value)
    if text.startswith("%"):
      out.add(text[1:])
    return
  if isinstance(value, dict):
    for v in value.values():
      _macro_refs(v, out)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      _macro_refs(v, out)


def _defined_and_used_macros() -> tuple[set[str], set[str]]:
  defined, used = set(), set()
  for (scope_name, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == "gin.macro":
      defined.add(scope_name)
    for v in params.values():
      _macro_refs(v, used)
  return defined, used


def _required_left() -> list[str]:
  """Bindings still set to %gin.REQUIRED (macros by name, other parameters as scope/fn.param)."""
  out = []
  retrieve = getattr(gin.config, "_retrieve_constant", None)
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    for name, value in params.items():
      if (isinstance(value, gin.config.ConfigurableReference)
          and value.configurable.wrapped is retrieve
          and value.scoped_configurable_fn() is gin.REQUIRED):
        out.append(scope if selector == "gin.macro" else f"{selector}.{name}")
  return sorted(out)


def configure(args: argparse.Namespace) -> None:
  """Clears gin, then parses the files and bindings of `args` (see `parse_flags`).

  Raises FlagError naming the gin file or the flag at fault.
  """
  # Modules that register configurables with decorators must be imported before parsing so
  # their names resolve in gin files and bindings (the TF-free ones; data.tasks needs a gin
  # `import spec_cascade.data.tasks` line, as it loads TensorFlow).
  import spec_cascade.checkpoints  # pylint: disable=g-import-not-at-top,unused-import
  import spec_cascade.data.offline  # pylint: disable=g-import-not-at-top,unused-import
  import spec_cascade.models  # pylint: disable=g-import-not-at-top,unused-import
  gin.clear_config()
  _tolerate_folders_named_like_gin_paths()
  for path in args.gin_search_paths + [os.getcwd(), CONFIG_ROOT, CONFIGS_DIR]:
    if path not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
      gin.add_config_file_search_path(path)
  for path in args.gin_file:
    try:
      gin.parse_config_file(path)
    except (IOError, OSError) as e:
      raise FlagError(f"--gin_file={path}: cannot read it ({e}).") from None
    except Exception as e:  # gin raises ValueError / SyntaxError / TokenError etc.
      raise FlagError(f"--gin_file={path}: {type(e).__name__}: {e}") from None
  for binding, source in zip(args.gin_bindings, args.binding_sources):
    text = binding
    m = _FULL_PATH_BINDING.match(binding)
    if m:
      # A full path (spec_cascade.sweep.run_sweep.batch_size) names the configurable the gin
      # files registered under an import alias; importing the module here makes it resolve.
      text = f"from __gin__ import dynamic_registration\nimport {m.group(1)}\n{binding}"
    try:
      gin.parse_config(text)
    except Exception as e:
      hint = ""
      if re.search(r"=\s*[A-Za-z_/.][\w/.-]*\s*$", binding) and "@" not in binding:
        hint = (" If VALUE is a string, quote it: "
                f"{source.partition('=')[0]}=\"'{binding.partition('=')[2].strip()}'\".")
      raise FlagError(f"bad gin binding {source!r}: {type(e).__name__}: {e}{hint}") from None
  defined, used = _defined_and_used_macros()
  for binding, source in zip(args.gin_bindings, args.binding_sources):
    name = binding.partition("=")[0].strip()
    if _MACRO_NAME.match(name) and name not in used:
      known = sorted(m for m in defined if m in used)
      raise FlagError(f"{source!r} sets the macro {name}, but no gin file uses %{name}, so it "
                      f"would do nothing (a typo?). Macros the config uses: {', '.join(known)}.")
  # The config is not locked (gin.finalize): modules imported later, e.g. the seqio tasks, may
  # still register configurables. gin.finalize would also refuse unset %gin.REQUIRED values;
  # that check is done here instead, with the flag that fixes it.
  missing = _required_left()
  if missing:
    raise FlagError("required gin values are not set: " + ", ".join(missing) + ". Pass "
                    + " ".join(f"--gin.{m}=VALUE" for m in missing if _MACRO_NAME.match(m))
                    + " (strings quoted) or bind them in a gin file.")
  if args.tfds_data_dir:
    from spec_cascade.data import tasks  # pylint: disable=g-import-not-at-top  (imports TF)
    tasks.set_tfds_data_dir(args.tfds_data_dir)


def call_configured(fn: Callable[..., Any]) -> Any:
  """Calls `fn` with its gin bindings; unset `%gin.REQUIRED` macros become a FlagError."""
  try:
    configured = gin.get_configurable(fn)
  except ValueError as e:
    raise FlagError(f"the gin config does not configure {fn.__module__}.{fn.__name__} "
                    f"({e}); include e.g. configs/runs/sweep.gin or configs/runs/infer.gin.") from None
  check_bound_types()
  try:
    return configured()
  except ValueError as e:
    m = _REQUIRED_RE.search(str(e))
    if m:
      raise FlagError(f"the macro {m.group(1)} is required but not set: pass "
                      f"--gin.{m.group(1)}=VALUE or bind it in a gin file.") from None
    if "Required bindings for" in str(e):
      raise FlagError(f"{str(e).splitlines()[0]}; bind them in a gin file or with "
                      "--gin_bindings.") from None
    raise


def operative_config_text() -> str:
  """The config to record with a run: gin's operative config (the values actually used so
  far), or the full parsed config if nothing has been called yet; '' when gin is unused."""
  text = gin.operative_config_str()
  if not text.strip() or "# Parameters for" not in text:
    text = gin.config_str()
  return text


# ----------------------------------------------------------------------------------------------
# Types of gin-bound values, and user errors at the command line

_SIMPLE = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}


def _allowed_types(hint) -> tuple[type, ...] | None:
  """The Python types a simple annotation (float, int, str, bool, X | None) accepts; None for
  anything richer (sequences, mappings, dataclasses), which is not checked here."""
  if hint in _SIMPLE:
    return _SIMPLE[hint] + ((np.integer,) if hint in (int, float) else ())
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    out = []
    for arg in typing.get_args(hint):
      if arg is type(None):
        out.append(type(None))
        continue
      allowed = _allowed_types(arg)
      if allowed is None:
        return None
      out.extend(allowed)
    return tuple(out)
  return None


def _bound_value(value: Any) -> tuple[bool, Any]:
  """(known, value) of a gin binding: a macro's value, or (False, None) for a reference to a
  configurable (called at run time, not checked here)."""
  if isinstance(value, gin.config.ConfigurableReference):
    if repr(value).startswith("%"):
      try:
        return True, value.scoped_configurable_fn()
      except Exception:  # pylint: disable=broad-except
        return False, None
    return False, None
  return True, value


def _check_one(fn: Callable[..., Any], bindings: dict[str, Any]) -> None:
  try:
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) and not
                                  dataclasses.is_dataclass(fn) else fn)
  except Exception:  # pylint: disable=broad-except  (unresolvable hints: nothing to check)
    return
  for name, raw in bindings.items():
    known, value = _bound_value(raw)
    allowed = _allowed_types(hints.get(name))
    if not known or allowed is None or value is gin.REQUIRED:
      continue
    ok = (bool in allowed) if isinstance(value, bool) else isinstance(value, allowed)
    if not ok:
      want = " or ".join(sorted({t.__name__ for t in allowed
                                 if t not in (np.integer, type(None))}))
      if type(None) in allowed:
        want += " (or None)"
      via = f" (through the macro {repr(raw)[1:]})" if isinstance(
          raw, gin.config.ConfigurableReference) else ""
      raise FlagError(f"{fn.__name__}.{name}{via} must be {want}, got {value!r} "
                      f"({type(value).__name__}). Fix the binding (strings need quotes, "
                      "numbers none).")


def check_bound_types(fn: Callable[..., Any] | None = None) -> None:
  """FlagError when a value bound to a simply-typed parameter (float, int, str, bool,
  optionally None) of a configurable has another type, naming the parameter, the value and
  its type. fn: check that configurable only; None: every configurable the config binds."""
  if fn is not None:
    try:
      bindings = gin.get_bindings(fn)
    except Exception:  # pylint: disable=broad-except
      return
    _check_one(fn, bindings)
    return
  for (_, selector), params in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector == "gin.macro":
      continue
    match = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
    if match is not None:
      _check_one(match.wrapped, dict(params))


def describe_error(e: BaseException) -> str:
  """One line for the user: what went wrong and, for file-system errors, which path."""
  if isinstance(e, OSError) and getattr(e, "filename", None):
    path = e.filename
    if isinstance(e, NotADirectoryError):
      return (f"{path}: a part of this path is a regular file, not a folder; choose an output "
              "path inside a folder.")
    if isinstance(e, IsADirectoryError):
      return f"{path}: is a folder where a file was expected."
    if isinstance(e, PermissionError):
      return f"{path}: permission denied; choose a path you can write to."
    if isinstance(e, FileNotFoundError):
      return f"{path}: no such file or folder."
    return f"{path}: {e.strerror or e}"
  # gin appends "In call to configurable ..." lines to errors raised inside a configurable.
  return "\n".join(line for line in str(e).splitlines()
                   if not line.strip().startswith("In call to configurable")).strip()


USER_ERRORS = (FlagError, ValueError, TypeError, OSError, KeyError, pod.PodError)


def start_pod(args: argparse.Namespace) -> None:
  """Joins the multi-host run the parsed pod flags (or the environment) describe; nothing for a
  single process. Call before anything touches a JAX device."""
  pod.initialize(pod.settings_from(args))


def run_cli(main: Callable[[], Any]) -> int:
  """Runs an entry point's main(): a user mistake (bad flag, value, path or file) prints one
  `error: ...` line and returns 2 instead of a traceback; set SPEC_CASCADE_DEBUG=1 to get the
  traceback. Returns main's int result, or 0."""
  try:
    result = main()
  except USER_ERRORS as e:
    if os.environ.get("SPEC_CASCADE_DEBUG"):
      raise
    msg = describe_error(e)
    if not isinstance(e, (ValueError, OSError, pod.PodError)):
      msg = f"{type(e).__name__}: {msg} (run with SPEC_CASCADE_DEBUG=1 for the traceback)"
    print(f"error: {msg}", file=sys.stderr)
    return 2
  return result if isinstance(result, int) else 0


def cli_main(fn: Callable[..., Any]) -> Callable[..., int]:
  """Decorates an entry point's main(argv) with `run_cli`: exit status 2 and one `error:` line
  for a user mistake, never a traceback."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs) -> int:
    return run_cli(lambda: fn(*args, **kwargs))
  return wrapper
