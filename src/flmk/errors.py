"""Errors that are the user's to fix, and the entry points' way of printing them.

An error the user fixes (a dataset path, a malformed file, a config typo, an option value) prints as
``flmk: <message>`` without a traceback and exits with status 2, and the run folder Hydra made for the
failed run is removed when nothing but its config and log is in it. ``HYDRA_FULL_ERROR=1`` shows the
full trace instead; any other exception keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path

EXIT_USER_ERROR = 2


class FlmkUserError(Exception):
    """The base of every error the user fixes: printed as one message, exit status 2."""


class OptionError(FlmkUserError, ValueError):
    """A config option whose value, or combination with another, flmk cannot run with."""


class InputNotFoundError(FlmkUserError, FileNotFoundError):
    """A file or folder the user named is missing, or holds nothing flmk can use."""


def closest(word: str, candidates, n: int = 3) -> list[str]:
    """The candidates that look most like ``word`` (difflib's ratio, best first)."""
    return difflib.get_close_matches(word, [str(c) for c in candidates], n=n, cutoff=0.5)


def did_you_mean(word: str, candidates) -> str:
    near = closest(word, candidates)
    return f" (closest: {', '.join(near)})" if near else ""


# -- Hydra / OmegaConf errors in the user's words ----------------------------------------------------
def _override_keys(argv: list[str]) -> list[tuple[str, str]]:
    """(key, override) for the ``key=value`` command-line arguments."""
    return [(a.split("=", 1)[0].lstrip("+~"), a) for a in argv if "=" in a and not a.startswith("-")]


def _compose_without(conf_dir: str, config_name: str, argv: list[str], bad_key: str):
    """The config composed from the other overrides (to list the keys that do exist); None if that fails too."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    kept = [o for k, o in _override_keys(argv) if k != bad_key and not k.startswith("hydra.")]
    GlobalHydra.instance().clear()
    for overrides in (kept, []):
        try:
            with initialize_config_dir(conf_dir, version_base="1.3"):
                return compose(config_name, overrides=overrides)
        except Exception:  # noqa: BLE001 - any failure: try the plain config, then give up on suggestions
            continue
    return None


def unknown_key_message(key: str, cfg) -> str:
    """``data.cahce`` -> 'unknown option data.cahce (closest: data.cache)', suggesting at the first wrong part."""
    from omegaconf import DictConfig

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            prefix = ".".join(parts[:i])
            keys = [f"{prefix}.{k}" if prefix else str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            return f"unknown option {key}{did_you_mean('.'.join(parts[: i + 1]), keys)}"
        node = node[part]
    return f"option {key} could not be set"


def describe(exc: BaseException, conf_dir: str | None = None, config_name: str | None = None,
             argv: list[str] | None = None) -> str:
    """The user's message for a user error (see :func:`is_user_error`)."""
    from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException

    argv = sys.argv[1:] if argv is None else argv
    if isinstance(exc, InstantiationException) and isinstance(exc.__cause__, FlmkUserError):
        exc = exc.__cause__
    if isinstance(exc, FlmkUserError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        options = list(exc.options or [])
        near = did_you_mean(name, options)
        listing = f"; options: {', '.join(options)}" if options and not near else ""
        return f"no config {group}={name} (no conf/{exc.missing_cfg_file}.yaml){near}{listing}"
    if isinstance(exc, ConfigCompositionException) and getattr(exc.__cause__, "full_key", None):
        key = exc.__cause__.full_key
        cfg = _compose_without(conf_dir, config_name, argv, key) if conf_dir and config_name else None
        hint = unknown_key_message(key, cfg) if cfg is not None else f"unknown option {key}"
        return f"{hint}; to add a new key write +{key}=..."
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += f": {str(cause).strip()}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def is_user_error(exc: BaseException) -> bool:
    """flmk's user errors, Hydra's config errors and OmegaConf's key/value errors; not bugs in flmk."""
    from hydra.errors import (ConfigCompositionException, InstantiationException, MissingConfigException,
                              OverrideParseException)
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, InstantiationException):
        return isinstance(exc.__cause__, FlmkUserError)
    return isinstance(exc, (FlmkUserError, ConfigCompositionException, MissingConfigException,
                            OverrideParseException, OmegaConfBaseException))


# -- the entry points' wrapper -----------------------------------------------------------------------
def remove_empty_run_dir() -> Path | None:
    """Remove the Hydra run folder of a failed run when it holds only ``.hydra/`` and logs; return it if removed."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    out = Path(HydraConfig.get().runtime.output_dir)
    if not out.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in out.iterdir()):
        return None
    shutil.rmtree(out, ignore_errors=True)  # DDP ranks failing together may race here
    parent = out.parent  # a multirun's folder left with only multirun.yaml, then folders left empty (date, outputs/)
    if parent.is_dir() and [p.name for p in parent.iterdir()] == ["multirun.yaml"]:
        shutil.rmtree(parent, ignore_errors=True)
        parent = parent.parent
    cwd = Path.cwd().resolve()
    with contextlib.suppress(OSError):
        while parent.is_dir() and cwd in parent.resolve().parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return out


_USER_FULL_ERROR = "FLMK_USER_HYDRA_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, kept while run_cli sets its own


def full_trace_wanted() -> bool:
    """The user asked for full tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def _stop(e: Exception, conf_dir: str | None, config_name: str | None) -> typing.NoReturn:
    message = describe(e, conf_dir, config_name)
    remove_empty_run_dir()
    print(f"flmk: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None


def run_cli(main: Callable[[], object], conf_dir: str | None = None, config_name: str | None = None) -> object:
    """Run an entry point's ``main``: user errors print ``flmk: <message>`` and exit with status 2.

    Hydra is told to re-raise (``HYDRA_FULL_ERROR``) so that its config errors reach us; with
    ``HYDRA_FULL_ERROR=1`` set by the user, every error keeps its full traceback.
    """
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", _USER_FULL_ERROR)}
    os.environ[_USER_FULL_ERROR] = "1" if full_trace_wanted() else ""  # DDP ranks inherit the user's choice
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return main()
    except Exception as e:
        if full_trace_wanted() or not is_user_error(e):
            raise
        _stop(e, conf_dir, config_name)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hydra_cli(conf_dir: str, config_name: str) -> Callable:
    """``@hydra.main`` for flmk's entry points, with :func:`run_cli`'s handling of user errors.

    Errors inside the job stop it right there (before Hydra reports a failed job); config errors
    found while composing are caught around Hydra.
    """
    import hydra

    def decorate(task: Callable) -> Callable:
        @functools.wraps(task)
        def job(cfg):
            try:
                return task(cfg)
            except Exception as e:
                if full_trace_wanted() or not is_user_error(e):
                    raise
                _stop(e, conf_dir, config_name)

        hydra_main = hydra.main(version_base="1.3", config_path=conf_dir, config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> object:
            return run_cli(hydra_main, conf_dir, config_name)

        return main

    return decorate
