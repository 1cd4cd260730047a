"""A miniature chatbot host: a Chat tab answered through the fallback, and the tabs under Settings.

    FALLBACK_PRIMARY_URL=http://127.0.0.1:5000/v1 python -m webui.host_example [--host H] [--port P]

What a host like Z-WAIF does with this project, in one file: the chat streams through
``manager.stream_chat_completion`` (the main API from FALLBACK_PRIMARY_URL first, then the
fallbacks), every answer names the target that gave it, and the Settings tab holds
``build_tabs(manager)``. It runs on any Gradio from 4.36 to 6; the browser tests embed the tabs here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr

from zwaif_fallback import FallbackError, FallbackManager

from . import compat
from . import format as fmt
from .app import build_tabs, launch, wait_for_ctrl_c

__all__ = ["ChatHandlers", "build_host", "main"]

TITLE = "Chatbot host (zwaif-fallback example)"
MAX_TOKENS = 256


class ChatHandlers:
    """The Chat tab: the conversation lives in the session's gr.State as OpenAI messages, each
    answer with the line that says who gave it (shown, never sent back to the model)."""

    def __init__(self, manager: FallbackManager) -> None:
        self.manager = manager

    def respond(self, message: str, turns: list[dict[str, str]] | None) -> Iterator[tuple[Any, ...]]:
        """Stream the answer into the chat: (chat, turns, message box) after each piece; the box
        is emptied once, when the message is taken."""
        text = fmt.text(message)
        if not text:
            gr.Warning("Type a message to send.")
            yield gr.skip(), gr.skip(), gr.skip()
            return
        turns = [*(turns or []), {"role": "user", "content": text, "by": ""}]
        request = {"messages": [{"role": t["role"], "content": t["content"]} for t in turns],
                   "max_tokens": MAX_TOKENS, "stream": True}
        content, by = "", "*waiting for the first words…*"
        yield (*self.outputs([*turns, {"role": "assistant", "content": content, "by": by}]), "")
        for chunk in self.manager.stream_chat_completion(request):
            if "error" in chunk:
                by = f"❌ no answer: {chunk['error']['message']}"
            for choice in chunk.get("choices", []):
                content += choice["delta"].get("content") or ""
                by = f"*answering: `{chunk['model']}`…*"
            if "x_fallback" in chunk:
                by = answered_by(chunk["x_fallback"])
            # the message box is left alone: the person may be typing the next message
            yield (*self.outputs([*turns, {"role": "assistant", "content": content, "by": by}]), gr.skip())

    @staticmethod
    def outputs(turns: list[dict[str, str]]) -> tuple[list[Any], list[dict[str, str]]]:
        """The Chatbot's value (each answer followed by its line) and the turns."""
        shown = [{"role": t["role"], "content": "\n\n".join(filter(None, (t["content"], t["by"])))}
                 for t in turns]
        return compat.chat_value(shown), turns


def answered_by(fallback: Mapping[str, Any]) -> str:
    """The line under an answer: the target that gave it, and whether the chain fell back."""
    how = "after a failover" if fallback.get("fell_back") else "directly"
    switched = f", switched {len(fallback['switches'])}× mid-answer" if fallback.get("switches") else ""
    return f"*answered by `{fallback.get('model')}` ({fallback.get('source')}) {how}{switched}*"


def build_host(manager: FallbackManager) -> gr.Blocks:
    """The host's page: its own Chat tab, and the fallback tabs under Settings."""
    handlers = ChatHandlers(manager)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as host:
        with gr.Tab("Chat"):
            chat = compat.chatbot(label="Chat", height=420, elem_id="host-chat")
            with gr.Row():
                message = gr.Textbox(label="Message", placeholder="Say hello", scale=4,
                                     elem_id="host-message")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="host-send")
            turns = gr.State([])
        with gr.Tab("Settings"):
            build_tabs(manager)
        # Not an API endpoint: gradio_client 1.3 (Gradio 4.44) fails on the messages Chatbot's schema.
        gr.on([send.click, message.submit], handlers.respond, inputs=[message, turns],
              outputs=[chat, turns, message], **compat.PRIVATE)
    return host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.host_example", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7861, help="TCP port (default: 7861)")
    args = parser.parse_args(argv)
    manager = FallbackManager()
    try:
        url = launch(manager, host=args.host, port=args.port, block=False, blocks=build_host(manager))
    except FallbackError as exc:
        manager.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{TITLE}: {url}  (Ctrl+C stops it)", flush=True)
    try:
        wait_for_ctrl_c()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
