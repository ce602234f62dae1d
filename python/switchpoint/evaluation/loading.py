"""Loading hooks from their dotted paths: the module imported, the class or factory called with
the hook's options. Every problem refuses the config, naming the field."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from switchpoint.errors import ConfigError
from switchpoint.evaluation.config import HookConfig
from switchpoint.evaluation.hooks import HOOK_POINTS, Hook


@dataclass(frozen=True, slots=True)
class LoadedHook:
    config: HookConfig
    instance: object

    @property
    def name(self) -> str:
        return self.config.label


def load_hooks(hooks: Sequence[HookConfig], source: str = "config") -> list[LoadedHook]:
    """Every hook of the section, or ConfigError listing each one that does not load."""
    loaded: list[LoadedHook] = []
    errors: list[str] = []
    for i, hook in enumerate(hooks):
        try:
            loaded.append(LoadedHook(hook, _instance(hook)))
        except _LoadError as exc:
            errors.append(f"evaluation.hooks[{i}].{exc.field}: {exc}")
    if errors:
        raise ConfigError(errors, source)
    return loaded


def implemented_points(instance: object) -> list[str]:
    """The hook points `instance` implements (a `Hook` base method left as it is does not count)."""
    points = []
    for point in HOOK_POINTS:
        method = getattr(instance, point, None)
        if not callable(method):
            continue
        if getattr(method, "__func__", None) is getattr(Hook, point):
            continue
        points.append(point)
    return points


class _LoadError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _instance(hook: HookConfig) -> object:
    module_name, _, attribute = hook.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs the module: any error is the hook's
        raise _LoadError("path", f"cannot import module '{module_name}': {exc}") from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise _LoadError("path", f"module '{module_name}' has no attribute '{attribute}'")
    if not callable(factory):
        raise _LoadError("path", f"'{hook.path}' is not a class or factory")
    try:
        instance: object = factory(dict(hook.options))
    except Exception as exc:
        raise _LoadError("options", f"'{hook.path}' refused its options: {exc}") from None
    if not implemented_points(instance):
        raise _LoadError(
            "path", f"'{hook.path}' made an object with none of {', '.join(HOOK_POINTS)}"
        )
    return instance
