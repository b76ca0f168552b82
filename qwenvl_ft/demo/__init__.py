"""`qwenvl-ft demo`: a web page to try a model or a run on your own images, beside its base model.

    qwenvl-ft demo runs/my-run --compare runs/my-run/base   # or any checkpoint predict loads

`core.py` holds what the page does (models, uploads, one chat per model, drawn boxes) and is
tested without a browser; `app.py` is the gradio page over it (the optional `demo` extra).
"""
