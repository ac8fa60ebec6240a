"""A self-contained HTML page of documents with every token colored by its score and selection.

Like the paper's token-selection figures: the background of a token shows its score (diverging
around 0: green above, red below, white at 0; the color saturates at +-`scale`), selected tokens
are drawn in bold with a solid underline, and tokens flagged as marked (e.g. injected noise) get a
dotted outline. Hovering a token shows its score and losses.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenView:
    text: str
    score: float
    selected: bool
    marked: bool = False
    tooltip: str = ""


def document_pieces(segment_ids: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row, segment id, positions) of every document piece of a packed batch `[B, T]` (ids > 0)."""
    for row, segments in enumerate(segment_ids):
        for segment in np.unique(segments[segments > 0]):
            yield row, int(segment), np.flatnonzero(segments == segment)


def piece_views(batch: dict[str, np.ndarray], decode: Callable[[list[int]], str], row: int, positions: np.ndarray,
                target_view: Callable[[str, int], TokenView]) -> list[TokenView]:
    """A document piece as tokens: its first input token (unscored), then `target_view(text, t)`
    for the target at every position t of `positions`."""
    first = TokenView(decode([int(batch["input_ids"][row, positions[0]])]), float("nan"), False)
    return [first] + [target_view(decode([int(batch["targets"][row, t])]), t) for t in positions]


def _background(score: float, scale: float) -> str:
    if not math.isfinite(score):
        return "#eeeeee"
    strength = min(abs(score) / scale, 1.0)
    fade = round(255 * (1 - 0.75 * strength))
    return f"rgb({fade},255,{fade})" if score > 0 else f"rgb(255,{fade},{fade})"


def _token_html(token: TokenView, scale: float) -> str:
    classes = " ".join(name for name, on in (("sel", token.selected), ("mark", token.marked)) if on)
    text = html.escape(token.text).replace("\n", "&#8629;<br>")
    title = html.escape(token.tooltip or f"score {token.score:.3f}", quote=True)
    return f'<span class="{classes}" style="background:{_background(token.score, scale)}" title="{title}">{text}</span>'


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
.doc { font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.9; white-space: pre-wrap;
       border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.doc span { border-radius: 2px; }
.sel { font-weight: bold; text-decoration: underline; text-decoration-thickness: 2px; }
.mark { outline: 1px dotted #555; }
.legend span { padding: 0 0.4em; margin-right: 0.6em; }
"""


def render_token_html(title: str, intro: str, documents: list[tuple[str, list[TokenView]]], scale: float,
                      path: str | Path) -> None:
    """Write the page to `path`: `documents` are (caption, tokens) pairs; `intro` is trusted HTML."""
    legend = (
        f'<p class="legend">score: <span style="background:{_background(scale, scale)}">+{scale:g} or more</span>'
        f'<span style="background:#ffffff;border:1px solid #ccc">0</span>'
        f'<span style="background:{_background(-scale, scale)}">-{scale:g} or less</span>'
        '<span class="sel">selected</span><span class="mark">marked</span></p>'
    )
    body = "".join(
        f"<h3>{html.escape(caption)}</h3><div class=\"doc\">{''.join(_token_html(t, scale) for t in tokens)}</div>"
        for caption, tokens in documents
    )
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}{legend}{body}</body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
