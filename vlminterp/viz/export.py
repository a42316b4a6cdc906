"""Writing a figure: HTML always, PNG when kaleido and a Chrome-family browser can render it.

Each file is written to a temporary name beside it and moved into place
(:func:`vlminterp.io.atomic_path`), so a reader never sees half a file.

Example:
    >>> import contextlib, io, tempfile, pathlib, plotly.graph_objects as go
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "fig"
    >>> with contextlib.redirect_stdout(io.StringIO()):  # "PNG skipped" where kaleido cannot render
    ...     written = save_figure(go.Figure(), out)
    >>> written[0].name
    'fig.html'
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from vlminterp.io import atomic_path

__all__ = ["png_unavailable_reason", "save_figure"]


def png_unavailable_reason() -> str | None:
    """None when PNG export can work, else why not (kaleido missing, or no Chrome-family browser)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install 'vlminterp[export]')"
    try:
        from choreographer.browsers.chromium import Chromium

        if Chromium.find_browser(skip_local=False) is None:
            return "kaleido found no Chrome/Chromium browser (install chromium, or set BROWSER_PATH)"
    except ImportError:  # an older kaleido bundles its own renderer
        return None
    return None


def save_figure(
    fig: go.Figure, path: str | Path, *, include_plotlyjs: str | bool = "directory"
) -> list[Path]:
    """Write ``path.html`` always and ``path.png`` when kaleido can render; returns the written paths.

    Args:
        fig: The figure.
        path: Output path without extension.
        include_plotlyjs: Passed to ``fig.write_html``; the default ``"directory"`` writes one shared
            ``plotly.min.js`` next to the HTML (offline, and small when there are many figures).
    """
    path = Path(path)
    html = path.parent / f"{path.name}.html"
    with atomic_path(html) as tmp:
        fig.write_html(tmp, include_plotlyjs=include_plotlyjs)
    written = [html]
    reason = png_unavailable_reason()
    if reason is not None:
        print(f"PNG skipped for {html.name}: {reason}.")
        return written
    png = path.parent / f"{path.name}.png"
    try:
        with atomic_path(png) as tmp:
            fig.write_image(
                tmp, format="png", width=fig.layout.width or 1000, height=fig.layout.height or 650
            )
    except Exception as err:  # a broken browser install must not lose the HTML already written
        print(f"PNG skipped for {html.name}: kaleido failed ({type(err).__name__}: {err}).")
        return written
    written.append(png)
    return written
