"""The explorer's web app (Starlette + Jinja2, server-side SVG, no JavaScript): read-only pages
over one node's ledger and blobs.

Every path and query value is checked before use (hex ids of bounded length, bounded page
numbers); anything else gets a 400 page naming the problem, an id the ledger lacks a 404.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from trustgen.explorer import training_view, views
from trustgen.explorer.index import LedgerIndex
from trustgen.gossip.blobs import BlobStore

TEMPLATES = pathlib.Path(__file__).parent / "templates"
_HEX = re.compile(r"^[0-9a-f]*$")
MAX_PAGE = 1_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadRequest(Exception):
    """A request value that is not what the page takes (400, its message shown)."""


def hex_id(value: str, what: str, exact: int | None = 32) -> bytes:
    value = value.strip().lower()
    if not _HEX.match(value) or len(value) % 2 or (exact is not None and len(value) != 2 * exact):
        size = f"{2 * exact} hex digits" if exact else "hex digits"
        raise BadRequest(f"{what} must be {size}")
    return bytes.fromhex(value)


def page_of(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequest(f"page must be a number from 1 to {MAX_PAGE}")
    return int(raw)


def create_app(ledger_dir: pathlib.Path) -> Starlette:
    ix = LedgerIndex(pathlib.Path(ledger_dir))
    blobs = BlobStore(ix.dir / "blobs") if (ix.dir / "blobs").is_dir() else None
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["short"] = lambda h, n=12: (h or "")[:n]

    def page(name: str, build: Callable[[Request], dict[str, Any] | None], what: str) -> Callable:
        def handler(request: Request) -> Response:
            try:
                ix.refresh()
                ctx = build(request)
            except BadRequest as e:
                return render(request, "error.html", {"message": str(e)}, 400)
            if ctx is None:
                return render(request, "error.html", {"message": f"no {what} with that id in this ledger"}, 404)
            return render(request, name, ctx)

        return handler

    def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
        # Named apart from the pages' own keys: the feed and training pages list their "entries".
        base = {"network": ix.network, "ledger_entries": ix.next, "ledger": str(ix.path)}
        return templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    def search(request: Request) -> Response:
        q = request.query_params.get("q", "").strip().lower().removeprefix("sha256:")
        if not 4 <= len(q) <= 64 or not _HEX.match(q):
            return render(request, "error.html", {"message": "search for 4 to 64 hex digits of an id or digest"}, 400)
        ix.refresh()
        hits = views.search(ix, q)
        if len(hits) == 1:
            return RedirectResponse(link(hits[0]), status_code=303)
        return render(request, "search.html", {"q": q, "hits": [{**h, "link": link(h)} for h in hits]})

    def blob(request: Request) -> Response:
        digest = request.path_params["digest"]
        if len(digest) != 64 or not _HEX.match(digest):
            return Response("blob digest must be 64 hex digits\n", 400, media_type="text/plain")
        data = blobs.get(digest) if blobs is not None else None  # checked against its digest
        if data is None:
            return Response("no such blob on this node\n", 404, media_type="text/plain")
        media = "image/png" if data.startswith(PNG_MAGIC) else "application/octet-stream"
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=86400, immutable"})

    routes = [
        Route("/", page("overview.html", lambda r: views.overview(ix), "ledger")),
        Route("/tasks", page("tasks.html", lambda r: views.tasks_page(ix, page_of(r)), "page")),
        Route(
            "/task/{id}", page("task.html", lambda r: views.task(ix, hex_id(r.path_params["id"], "a task id")), "task")
        ),
        Route(
            "/node/{id}",
            page("node.html", lambda r: views.node(ix, hex_id(r.path_params["id"], "a node id"), page_of(r)), "node"),
        ),
        Route(
            "/feed/{id}",
            page("feed.html", lambda r: views.feed(ix, hex_id(r.path_params["id"], "a feed id"), page_of(r)), "feed"),
        ),
        Route(
            "/entry/{id}",
            page("entry.html", lambda r: views.entry(ix, hex_id(r.path_params["id"], "an entry hash")), "entry"),
        ),
        Route("/training", page("trainings.html", lambda r: {"jobs": training_view.trainings(ix)}, "job")),
        Route(
            "/training/{id}",
            page(
                "training.html",
                lambda r: training_view.training(ix, hex_id(r.path_params["id"], "a job id")),
                "training job",
            ),
        ),
        Route("/search", search),
        Route("/blob/{digest}", blob),
    ]
    app = Starlette(routes=routes)
    app.state.index = ix
    return app


def link(hit: dict[str, str]) -> str:
    """The page of a search hit."""
    return {
        "task": f"/task/{hit['ref']}",
        "result": f"/task/{hit['ref']}",
        "output": f"/task/{hit['ref']}",
        "entry": f"/entry/{hit['ref']}",
        "node": f"/node/{hit['ref']}",
        "job": f"/training/{hit['ref']}",
    }[hit["what"]]
