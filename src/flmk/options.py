"""Option values checked before a run starts, so a typo stops in one line instead of deep inside Lightning."""

from __future__ import annotations

import typing
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from flmk.errors import OptionError


def check_target_args(node: DictConfig, where: str) -> None:
    """Each key of a ``_target_`` config against the type its class's ``__init__`` declares (pydantic, lax).

    ``trainer.max_epochs=abc`` -> OptionError naming ``trainer.max_epochs``, the value and the type expected.
    Keys without a usable annotation, and nested configs, are left to the class itself.
    """
    import hydra

    check_args(hydra.utils.get_class(node._target_), OmegaConf.to_container(node, resolve=True), where)


def check_args(cls: type, values: dict, where: str) -> None:
    """Each of ``values`` against the type ``cls.__init__`` declares for its key (see check_target_args)."""
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    for key, value in values.items():
        if key not in hints or key.startswith("_") or isinstance(value, dict):  # nested configs: their own checks
            continue
        try:
            adapter = TypeAdapter(hints[key])
        except (PydanticSchemaGenerationError, TypeError):
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            reason = e.errors()[0]["msg"]
            raise OptionError(f"{where}.{key}={value!r}: {reason} (expected {_type_name(hints[key])})") from None


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "None")


def check_row_model(conf_dir: str | Path, ablation: str | None, command_line: list[str]) -> None:
    """A table row that chooses its own model (``defaults: [override /model: ...]``) refuses ``model=``."""
    if not ablation:
        return
    row_file = Path(conf_dir) / "ablation" / f"{ablation}.yaml"
    defaults = (yaml.safe_load(row_file.read_text()) or {}).get("defaults", []) if row_file.exists() else []
    chosen = next((d["override /model"] for d in defaults if isinstance(d, dict) and "override /model" in d), None)
    given = [o for o in command_line if o.split("=", 1)[0].lstrip("+") == "model"]
    if chosen is not None and given:
        raise OptionError(
            f"{given[0]}: ablation={ablation} chooses its own model (model={chosen}, conf/ablation/{ablation}.yaml); "
            "its table compares models row by row, so one model= for every row would turn them all into the same "
            "model. Drop model=, and set network keys with model.<key>=... or ++model.<key>=..."
        )


def check_options(cfg: DictConfig, conf_dir: str | Path, ablation: str | None, command_line: list[str]) -> None:
    """Every check above, before anything is built or trained."""
    check_row_model(conf_dir, ablation, command_line)
    for group in ("trainer", "data"):
        if cfg.get(group) is not None and "_target_" in cfg[group]:
            check_target_args(cfg[group], group)
    model = cfg.get("model")
    if model is not None:  # the module options of model.* (ema_decay, precise_bn, ...) against LandmarkModule's types
        import hydra

        cls = hydra.utils.get_class(model.get("module_target", "flmk.models.module.LandmarkModule"))
        values = {k: model[k] for k in model if not OmegaConf.is_missing(model, k) and not OmegaConf.is_config(model[k])}
        check_args(cls, values, "model")
