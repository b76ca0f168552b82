"""The demo page on gradio: `qwenvl-ft demo` builds it with `build()` and serves it with `serve()`.

Safe by default: it binds to 127.0.0.1; it never fetches a URL (gradio's own download of URLs
given as files is replaced by a refusal) and serves no file but the uploads, the drawn images and
copies of the example images; uploads are checked by content (`core.classify_upload`) and a bad
one is answered on the page; an error while answering is shown on the page and logged, and the
server goes on.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .core import DemoModel, Session, UploadRefused, example_prompts
from .search import SearchIndex

log = logging.getLogger("qwenvl_ft.demo")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
THINKING_CHOICES = ["model default", "on", "off"]


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry call home
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit(
            "qwenvl-ft demo needs gradio: pip install 'qwenvl-ft[demo]' (or bash scripts/setup_env.sh)"
        ) from None
    from gradio import processing_utils

    def refuse(url, *args, **kwargs):
        log.warning("demo: refused to fetch %s (the demo fetches no URL)", url)
        raise ValueError(f"the demo fetches no URL ({url}); upload the file instead")

    async def refuse_async(url, *args, **kwargs):
        refuse(url)

    # Every URL gradio would download for a file input goes through these.
    processing_utils.async_ssrf_protected_get = refuse_async
    processing_utils.async_ssrf_protected_download = refuse_async
    processing_utils.ssrf_protected_download = refuse
    processing_utils.unsafe_download = refuse
    return gr


class _Page:
    """One visitor's state: the chats and what each model's chat box shows."""

    def __init__(self, models: list[DemoModel], max_new_tokens: int, system: str | None):
        self.session = Session(models, max_new_tokens, system)
        self.shown: list[list[dict]] = [[] for _ in models]


def build(
    models: list[DemoModel],
    max_new_tokens: int = 512,
    system: str | None = None,
    examples_from: str | None = None,
    thinking: bool | None = None,
    search: SearchIndex | None = None,
):
    """The gradio Blocks of the page for `models` (one column each, the same question to all), and
    a search tab over `search`'s images when given (the chat tab only with models).

    thinking: the switch's first position (None: each checkpoint's default, a run's the mode it was
    trained in: README 'Thinking at inference')."""
    gr = _gradio()
    thinks = any(m.predictor.family.thinking for m in models)
    first = {True: "on", False: "off"}.get(thinking, "model default")
    video = all(m.takes_video for m in models)
    n = len(models)

    def new_page() -> _Page:
        return _Page(models, max_new_tokens, system)

    def ask(files, text, think, page):
        page = page or new_page()
        text = (text or "").strip()
        paths = [f if isinstance(f, str) else f.name for f in (files or [])]
        try:
            if not text:
                raise UploadRefused("type a question first")
            images, videos = page.session.check_uploads(paths)
        except UploadRefused as e:
            log.info("demo: refused: %s", e)
            yield (f"**Not sent:** {e}", *page.shown, *[gr.skip()] * n, gr.skip(), gr.skip(), page)
            return
        mode = {"on": True, "off": False}.get(think)
        base = [shown + _user_messages(text, paths) for shown in page.shown]
        replies, sent = [], set()
        for replies in page.session.ask(text, images, videos, mode):
            chats = [b + _assistant_messages(r) for b, r in zip(base, replies, strict=True)]
            # A model that is done shows its boxes at once (once), while the other still writes.
            drawn = [r.drawn if r.done and i not in sent else gr.skip() for i, r in enumerate(replies)]
            sent |= {i for i, r in enumerate(replies) if r.done}
            yield ("", *chats, *drawn, "", None, page)
        page.shown = [b + _assistant_messages(r) for b, r in zip(base, replies, strict=True)]
        errors = [f"{m.title}: {r.error}" for m, r in zip(models, replies, strict=True) if r.error]
        drawn = [r.drawn for r in replies]  # the final state in full (what an API caller reads)
        status = "**Error:** " + "; ".join(errors) if errors else _box_summary(replies)
        yield (status, *page.shown, *drawn, "", None, page)

    def reset(page):
        if page is not None:
            page.session.reset()
            page.shown = [[] for _ in models]
        return ("", *[[] for _ in models], *[None] * n, "", None, page)

    with gr.Blocks(title="qwenvl-ft demo", analytics_enabled=False) as demo:
        tabs = gr.Tabs() if search is not None else contextlib.nullcontext()
        with tabs:
            if models:
                with gr.Tab("Chat") if search is not None else contextlib.nullcontext():
                    gr.Markdown(
                        "## qwenvl-ft demo\n"
                        + "\n".join(f"- **{chr(65 + i)}**: `{m.title}`" for i, m in enumerate(models))
                    )
                    state = gr.State(None)
                    with gr.Row():
                        with gr.Column(scale=1, min_width=280):
                            kinds = "images or a video" if video else "images"
                            files = gr.File(label=f"Upload {kinds}", file_count="multiple", elem_id="uploads")
                            question = gr.Textbox(
                                label="Question", placeholder="Where is the red square?", elem_id="question"
                            )
                            think = gr.Radio(THINKING_CHOICES, value=first, label="Thinking", visible=thinks)
                            with gr.Row():
                                send = gr.Button("Send", variant="primary", elem_id="send")
                                clear = gr.Button("Reset", elem_id="reset")
                            status = gr.Markdown(elem_id="status")
                        chats, drawn = [], []
                        for i, m in enumerate(models):
                            with gr.Column(scale=2, min_width=320):
                                chats.append(
                                    gr.Chatbot(
                                        label=f"{chr(65 + i)}: {m.title}",
                                        height=360,
                                        elem_id=f"chat{i}",
                                        feedback_options=None,
                                    )
                                )
                                drawn.append(
                                    gr.Image(
                                        label=f"{chr(65 + i)}: boxes",
                                        type="pil",
                                        format="png",
                                        height=380,
                                        interactive=False,
                                        elem_id=f"boxes{i}",
                                    )
                                )
                    prompts = example_prompts(examples_from) if examples_from else []
                    if prompts:
                        gr.Examples(
                            [[_example_copies(p), q] for q, p in prompts],
                            [files, question],
                            label="Questions from the run's eval data (click one, then Send)",
                        )
                    outputs = [status, *chats, *drawn, question, files, state]
                    send.click(ask, [files, question, think, state], outputs, api_name="ask")
                    question.submit(ask, [files, question, think, state], outputs, api_name=False)
                    clear.click(reset, [state], outputs, api_name="reset")
            if search is not None:
                with gr.Tab("Search"):
                    search_tab(gr, search)
    return demo


def search_tab(gr, index: SearchIndex) -> None:
    """A query box, an instruction and the ranked images (API name "search")."""
    gr.Markdown(
        f"Search **{len(index.paths)}** images with `{index.embedder.family.title}` embeddings"
        + (f", the top {index.rerank_top} reranked" if index.reranker is not None else "")
    )
    with gr.Row():
        query = gr.Textbox(
            label="Query", placeholder="the red circle in the top left cell", elem_id="query", scale=3
        )
        instruction = gr.Textbox(
            label="Instruction (empty: the model's default)", elem_id="instruction", scale=2
        )
        top = gr.Slider(
            1, min(50, len(index.paths)), value=min(10, len(index.paths)), step=1, label="Results"
        )
    go = gr.Button("Search", variant="primary", elem_id="search")
    status = gr.Markdown(elem_id="search_status")
    gallery = gr.Gallery(label="Ranked", columns=5, height=420, elem_id="results")

    def run(text, instr, k):
        try:
            hits = index.search(text or "", instr, int(k))
        except ValueError as e:
            return f"**Not searched:** {e}", []
        return f"{len(hits)} of {len(index.paths)} images", [(str(h.path), h.caption) for h in hits]

    go.click(run, [query, instruction, top], [status, gallery], api_name="search")
    query.submit(run, [query, instruction, top], [status, gallery], api_name=False)


def serve(demo, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: int = 100, block: bool = True):
    """Serve the page; returns the local URL (block=False: at once, the server in the background)."""
    warn_if_exposed(host, port)
    demo.queue(default_concurrency_limit=1)  # one question at a time per model
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        quiet=True,
        prevent_thread_lock=True,
        ssr_mode=False,
        max_file_size=f"{max_upload_mb}mb",
        allowed_paths=[_EXAMPLES_DIR] if _EXAMPLES_DIR else None,
        footer_links=[],
    )
    print(f"qwenvl-ft demo: {url} (Ctrl-C to stop)", flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return url


def warn_if_exposed(host: str, port: int) -> bool:
    """Log a warning when `host` is not this machine alone; True if it did."""
    if host in LOCAL_HOSTS:
        return False
    log.warning(
        "demo: serving on %s: anyone who can reach this machine on port %d can use the model "
        "(no authentication)",
        host,
        port,
    )
    return True


_EXAMPLES_DIR: str | None = None


def _example_copies(paths: list[str]) -> list[str]:
    """Copies of the example images in a folder of the demo's own: the server serves them, and
    nothing else of the run's data."""
    global _EXAMPLES_DIR
    if _EXAMPLES_DIR is None:
        _EXAMPLES_DIR = tempfile.mkdtemp(prefix="qwenvl-ft-demo-examples-")
    out = []
    for p in paths:
        target = Path(_EXAMPLES_DIR) / f"{len(os.listdir(_EXAMPLES_DIR))}{Path(p).suffix}"
        shutil.copyfile(p, target)
        out.append(str(target))
    return out


def _user_messages(text: str, paths: list[str]) -> list[dict]:
    return [{"role": "user", "content": f"[{Path(p).name}]"} for p in paths] + [
        {"role": "user", "content": text}
    ]


def _assistant_messages(reply) -> list[dict]:
    out = []
    if reply.reasoning:  # collapsible in the chat box
        status = "done" if reply.done or reply.text else "pending"
        content = html.escape(reply.reasoning, quote=False)
        out.append(
            {"role": "assistant", "content": content, "metadata": {"title": "Reasoning", "status": status}}
        )
    if reply.error:
        out.append({"role": "assistant", "content": f"(error: {reply.error})"})
    elif reply.text or reply.done:
        # Escaped: box and ref tokens (`<ref>`, `<|box_start|>`) are the answer, not markup.
        out.append({"role": "assistant", "content": html.escape(reply.text, quote=False) or "(empty answer)"})
    return out


def _box_summary(replies) -> str:
    parts = []
    for i, r in enumerate(replies):
        if r.boxes:
            labels = ", ".join(label or f"box {k + 1}" for k, (label, _) in enumerate(r.boxes))
            parts.append(f"{chr(65 + i)}: {len(r.boxes)} box(es) ({labels})")
        elif r.drawn is not None:
            parts.append(f"{chr(65 + i)}: no box")
    return "; ".join(parts)
