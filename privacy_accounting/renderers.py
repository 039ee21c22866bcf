"""Report renderers by format name, registered by the modules that define them (``render_markdown``,
``render_html``); the report model looks them up here and so never imports them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privacy_accounting.report_models import PrivacyReport

Renderer = Callable[["PrivacyReport"], str]
_RENDERERS: dict[str, Renderer] = {}


def register_renderer(fmt: str) -> Callable[[Renderer], Renderer]:
    """Decorator: ``fn`` renders a :class:`PrivacyReport` as ``fmt``."""
    def decorator(fn: Renderer) -> Renderer:
        _RENDERERS[fmt] = fn
        return fn
    return decorator


def render(report: "PrivacyReport", fmt: str) -> str:
    """``report`` rendered by the renderer registered for ``fmt``."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"no report renderer for {fmt!r}; registered: {', '.join(sorted(_RENDERERS))}") from None
    return renderer(report)
