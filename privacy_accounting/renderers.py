"""Report renderers by format name, registered by the modules that define them (``render_markdown``,
``render_html``); the report model looks them up here and so never imports them. The package's own
renderers are imported the first time their format is asked for."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privacy_accounting.report_models import PrivacyReport

Renderer = Callable[["PrivacyReport"], str]
_RENDERERS: dict[str, Renderer] = {}
#: Renderers this package ships: format -> the module that registers it when imported.
_BUILT_IN = {"markdown": "privacy_accounting.render_markdown", "html": "privacy_accounting.render_html"}


def register_renderer(fmt: str) -> Callable[[Renderer], Renderer]:
    """Decorator: ``fn`` renders a :class:`PrivacyReport` as ``fmt``."""
    def decorator(fn: Renderer) -> Renderer:
        _RENDERERS[fmt] = fn
        return fn
    return decorator


def render(report: "PrivacyReport", fmt: str) -> str:
    """``report`` rendered by the renderer registered for ``fmt``."""
    if fmt not in _RENDERERS and fmt in _BUILT_IN:
        import_module(_BUILT_IN[fmt])
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        known = ", ".join(sorted({*_RENDERERS, *_BUILT_IN}))
        raise ValueError(f"no report renderer for {fmt!r}; registered: {known}") from None
    return renderer(report)
