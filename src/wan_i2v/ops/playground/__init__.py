"""A local web page that drives an endpoint: `wan-i2v playground`.

    history.py   every job the page sent, in SQLite, with its image, video and poster beside it
    backend.py   what the routes do: check a job with the worker's own schema, send it, follow it,
                 fetch its video, build curl/Python snippets (the API key stays here)
    app.py       the Flask routes and their guards (loopback, Host check, per-launch token, body cap)
    static/      the page: plain HTML, CSS and JavaScript shipped in the package (no CDN, no build step)

It needs Flask (`pip install 'wan-i2v[playground]'`); like the rest of `wan_i2v.ops` it never imports
torch or the worker.
"""

from .app import PlaygroundServer, create_app, is_loopback
from .backend import Playground, PlaygroundError
from .history import History

__all__ = ["History", "Playground", "PlaygroundError", "PlaygroundServer", "create_app", "is_loopback"]
