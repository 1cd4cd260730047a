"""Every difference between the Gradio versions the tabs run on, 4.36 to 6, in one place.

A process holds one Gradio, the host's, so the tabs adapt to it. Each shim detects a
feature (an attribute, a parameter), never a version string, and says which versions need it.
``gr.skip()``, ``gr.Dataframe(wrap=...)`` and ``launch(app_kwargs={"routes": ...})`` need none:
4.36.1 has them already. 4.x draws a gr.Dataframe given a frame with no rows without its
first column's header: ``on_show`` settles such a table as one blank row, and a table that is
empty on most machines (the GPUs) is hidden while it is.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import gradio as gr
import pandas as pd
from gradio.context import Context

__all__ = ["LAUNCH_KWARGS", "PRIVATE", "Poll", "chat_value", "chatbot", "colored", "on_page_load", "on_show",
           "plot", "redraw_on_show", "timer_update"]


def _takes(func: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(func).parameters


#: An event that is no API endpoint: ``api_visibility`` in 6; ``api_name=False`` in 4 and 5
#: (their ``show_api=False`` only hides it from the docs).
PRIVATE: dict[str, Any] = ({"api_visibility": "private"} if _takes(gr.on, "api_visibility")
                           else {"api_name": False})

#: ``launch()`` shows only the API link in the footer: ``footer_links`` in 6; 4 and 5 show it anyway.
LAUNCH_KWARGS: dict[str, Any] = {"footer_links": ["api"]} if _takes(gr.Blocks.launch, "footer_links") else {}

_NATIVE_PLOTS = _takes(gr.BarPlot.__init__, "y_aggregate")  # 4.4x on; before them, altair charts
# An open end in y_lim, [0, None]: typed so from 5.0, where bars no longer start at zero by themselves.
_OPEN_Y_LIM = "None]" in str(inspect.signature(gr.BarPlot.__init__).parameters["y_lim"].annotation)


def plot(cls: type[Any], **kwargs: Any) -> Any:
    """A gr.LinePlot or gr.BarPlot for this Gradio; its bars start at zero.

    Native plots (4.4x on) mount with an empty frame of their columns, unless given a
    ``value``: on 4.44.1 one that mounts with no value stops every load event of the page. They
    build a chart's axes and colours from a frame's column types and colour values, and build
    them anew only when a setting changes (``x_lim``, ``color_map``, a title...): new data
    alone is drawn on what they built. An empty frame's columns are untyped, and have no
    colour. A chart whose colours are known in advance therefore mounts with a ``value`` that
    has every one of them, at zero, in columns of the right types: 6.31 drew the monitoring
    charts, mounted empty, as categories with no line. One whose colours come with its data
    gets them with each frame (``colored``). Bars start at zero by themselves up to 4.x, where
    a None in y_lim breaks the axis; from 5.0 they need ``y_lim=[0, None]``.
    """
    if _NATIVE_PLOTS:
        kwargs.setdefault("value", pd.DataFrame(columns=[kwargs[k] for k in ("x", "y", "color")
                                                         if kwargs.get(k)]))
    if cls is gr.BarPlot and _OPEN_Y_LIM:
        kwargs.setdefault("y_lim", [0, None])
    return cls(**kwargs)


_COLOR_MAPS = _takes(gr.BarPlot.__init__, "color_map")  # native plots; before them, none


def colored(frame: pd.DataFrame, column: str, colors: Mapping[str, str] | Sequence[str]) -> Any:
    """A chart's new ``frame`` with a colour for each value of ``column`` in it: named in
    ``colors``, or a palette's, in turn, for the values in name order.

    A chart whose colours are not known when it mounts needs this where plots are native (4.4x
    to 6). They build a chart's colour scale from the values of the frame they draw it with, and
    build it anew only when a setting such as ``color_map`` changes: new data in new colours is
    drawn in none.
    A history chart that mounted empty (before any benchmark) stayed blank on 5.50 after its
    first runs came, until the page was loaded again. A color_map that names exactly the
    frame's colours changes whenever they do. Where plots take no color_map (4.36-4.3x), the
    frame alone: there the order in which the values first come picks the colours.
    """
    if not _COLOR_MAPS:
        return frame
    values = sorted({str(v) for v in frame[column]})
    if isinstance(colors, Mapping):
        color_map = {v: colors[v] for v in values}
    else:
        color_map = {v: colors[i % len(colors)] for i, v in enumerate(values)}
    return gr.update(value=frame, color_map=color_map)


def on_page_load(fn: Callable[..., Any], outputs: Sequence[gr.components.Component]) -> Any:
    """Call ``fn`` when the page loads, from inside any Blocks context (a host's too); the
    event is returned, to chain more to it (``.then``).

    ``gr.on(None, ...)`` is a page-load event only from 5.0 (4.x makes it listen to input
    changes); the load event of the page's root Blocks, the host's, fires in every version.
    """
    root = Context.root_block
    if root is None:
        raise RuntimeError("the tabs must be built inside a gr.Blocks context")
    return root.load(fn, outputs=list(outputs), **PRIVATE)


# 4.x draws a gr.Dataframe's rows only when its value changes while the table is on show. A
# value that comes while its tab is hidden (the page load fills every tab; a search or a chat
# may end after the person left) gets no row drawn, or only as many as it had before, and the
# same value sent again when the tab opens changes nothing. Seen on 4.36.1, the Gradio Z-WAIF
# pins; 6 and 5.50 draw them (the browser tests pass there without the redraw). The
# earlier 5.x releases are not tested here, so 5 keeps the redraw, which costs a round trip.
_REDRAW_ON_SHOW = not _takes(gr.on, "api_visibility")


def on_show(tab: gr.Tab, fn: Callable[[], Any], outputs: Sequence[gr.components.Component]) -> None:
    """Call ``fn`` whenever ``tab`` is selected, to refresh ``outputs``. Before 6, the tables
    among them are drawn anew (``_twice``)."""
    outputs = list(outputs)
    if _REDRAW_ON_SHOW and any(isinstance(o, gr.Dataframe) for o in outputs):
        _twice(tab, fn, [], outputs)
    else:
        tab.select(fn, outputs=outputs, **PRIVATE)


def redraw_on_show(tab: gr.Tab, tables: Sequence[gr.Dataframe]) -> None:
    """Before 6, draw ``tables`` anew, with the rows the page has, whenever ``tab`` is selected:
    for the tables no refresh on show covers (filled by a person's search, chat or monitoring)."""
    if _REDRAW_ON_SHOW:
        tables = list(tables)
        _twice(tab, lambda *shown: shown[0] if len(shown) == 1 else shown, tables, tables)


def _twice(tab: gr.Tab, fn: Callable[..., Any], inputs: Sequence[gr.components.Component],
           outputs: Sequence[gr.components.Component]) -> None:
    """On select, ``fn``'s tables go out with one empty row more, then, in an event of their own,
    as they are: two changes while the tab is on show, so 4.x draws the rows. The client sends
    the second event only once the first one's updates are applied, so the two cannot merge
    into one (updates that come within one animation frame do). The extra row is seen for a
    round trip. A table with no rows is drawn anew too, as one blank row: unmeasured, 4.x keeps
    it at its full height (500 px of blank). One left as it is (gr.skip()) is not sent again."""
    is_table = [isinstance(o, gr.Dataframe) for o in outputs]
    single = len(outputs) == 1
    with tab:  # in the tabs' gr.Tabs, between two tabs, 5.x drew a second button for the one before
        held = gr.State()  # the tables' values, between the two events

    def padded(*args: Any) -> tuple[Any, ...]:
        values = [fn(*args)] if single else list(fn(*args))
        shown, then = [], []
        for value, table in zip(values, is_table, strict=True):
            if table:
                value, settle_on = _padded_and_settled(value)
                then.append(settle_on)
            shown.append(value)
        return (*shown, then)

    def settled(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else tuple(values)

    tables = [o for o, table in zip(outputs, is_table, strict=True) if table]
    tab.select(padded, inputs=list(inputs), outputs=[*outputs, held], **PRIVATE).success(
        settled, inputs=held, outputs=tables, show_progress="hidden", **PRIVATE)


def _padded_and_settled(value: Any) -> tuple[Any, Any]:
    """A table's value with one empty row more, and the value to settle on after it."""
    update = value if isinstance(value, dict) else {"value": value}  # gr.update(value=..., visible=...)
    frame = update.get("value")
    if not isinstance(frame, pd.DataFrame):
        return value, gr.skip()
    empty = pd.DataFrame([[""] * len(frame.columns)], columns=frame.columns)
    if not len(frame):  # 4.x draws a frame with no rows without its first column's header
        frame = empty
    shown = pd.concat([frame, empty], ignore_index=True)
    return ({**update, "value": shown} if isinstance(value, dict) else shown), gr.update(value=frame)


_HAS_TIMER = hasattr(gr, "Timer")  # 4.40+


def timer_update(*, active: bool) -> dict[str, Any]:
    """The update a handler returns to switch its ``Poll`` on or off."""
    return gr.update(active=active) if _HAS_TIMER else gr.update(value=active)


class Poll:
    """Calls a handler every ``period_s`` seconds while it is on; off when the page opens.

    Handlers switch it by returning ``timer_update(active=...)`` for ``component``. From 4.40
    that is a gr.Timer. Before it (4.36-4.39) it is a hidden checkbox: switching it on starts a
    loop that calls the handler until the handler switches it off (``every=`` would poll
    forever, with the inputs it had when it started).
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.component: Any = (gr.Timer(period_s, active=False) if _HAS_TIMER  # the type depends on Gradio
                               else gr.Checkbox(False, visible=False))

    def on_tick(self, fn: Callable[..., tuple[Any, ...]], *, inputs: Sequence[gr.components.Component],
                outputs: Sequence[gr.components.Component]) -> None:
        """Bind ``fn``; its outputs end with ``component``'s update."""
        if _HAS_TIMER:
            self.component.tick(fn, inputs=list(inputs), outputs=list(outputs), show_progress="hidden",
                                **PRIVATE)
        else:
            self.component.change(self._loop(fn, len(outputs)), inputs=[self.component, *inputs],
                                  outputs=list(outputs), show_progress="hidden", concurrency_limit=None,
                                  **PRIVATE)

    def _loop(self, fn: Callable[..., tuple[Any, ...]],
              n_outputs: int) -> Callable[..., AsyncIterator[tuple[Any, ...]]]:
        off = timer_update(active=False)

        async def loop(on: bool, *args: Any) -> AsyncIterator[tuple[Any, ...]]:
            if not on:  # switched off; a generator that yields nothing would blank the outputs
                yield tuple(gr.skip() for _ in range(n_outputs))
            while on:
                outputs = await anyio.to_thread.run_sync(fn, *args)
                on = outputs[-1] != off  # before Gradio takes the update dicts apart
                yield outputs
                if on:
                    await asyncio.sleep(self.period_s)

        return loop


# Chatbot: [user, assistant] pairs only before gr.ChatMessage (4.36-4.3x); OpenAI-style messages
# after it, chosen with type="messages" in 4.4x and 5, the only format in 6.
_CHAT_MESSAGES = hasattr(gr, "ChatMessage")


def chatbot(**kwargs: Any) -> gr.Chatbot:
    """A gr.Chatbot that holds messages where this Gradio can."""
    if _takes(gr.Chatbot.__init__, "type"):
        kwargs["type"] = "messages"
    return gr.Chatbot(**kwargs)


def chat_value(messages: Sequence[dict[str, str]]) -> list[Any]:
    """OpenAI user and assistant messages (text content) as the Chatbot's value."""
    if _CHAT_MESSAGES:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    pairs: list[list[str | None]] = []
    for m in messages:
        if m["role"] == "assistant" and pairs and pairs[-1][1] is None:
            pairs[-1][1] = m["content"]
        else:
            pairs.append([m["content"], None] if m["role"] == "user" else [None, m["content"]])
    return pairs
