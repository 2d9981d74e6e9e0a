"""A browser's way in off loopback: a token pasted into the login form, or a link with
`?token=` (what `skyd token create` printed, for a bookmark). Either way the token goes
into a cookie the page's scripts cannot read (HttpOnly), sent over TLS only (Secure) and
never by another site's page (SameSite=Strict), and the browser is sent on to the page
without the token in its address bar or history.
"""

from __future__ import annotations

import html
import time
from urllib.parse import urlsplit

from aiohttp import web

from skyd.server.http.gate import COOKIE

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>skyd: log in</title>
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<header><h1>skyd</h1></header>
<main>
<section>
<h2>Log in with a token</h2>
<p class="notice">{why}</p>
<form method="post" action="/login">
  <label>token <input type="password" name="token" autocomplete="current-password"
    autofocus required></label>
  <button type="submit">log in</button>
</form>
<p>An admin of the server makes one: <code>skyd token create NAME --user YOU</code>.</p>
</section>
</main>
</body>
</html>
"""
NO_STORE = {"Cache-Control": "no-store"}


def page_text(why: str) -> str:
    return PAGE.format(why=html.escape(why.strip()))


def page(why: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=page_text(why), content_type="text/html",
                        headers=NO_STORE)


def signed_in(token: str, expires_at: float | None, to: str) -> web.Response:
    """A redirect to `to` that leaves the token in a cookie (for as long as it is valid,
    or the browser's session)."""
    response = web.Response(status=303, headers={"Location": to, **NO_STORE})
    max_age = None if expires_at is None else max(1, int(expires_at - time.time()))
    response.set_cookie(COOKIE, token, path="/", secure=True, httponly=True,
                        samesite="Strict", max_age=max_age)
    return response


def same_origin(request: web.Request) -> bool:
    """A form posted by our own page (a browser names the page's origin): another site
    must not log a person in under its own token."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None          # old clients send none; an opaque origin is foreign
    return urlsplit(origin).netloc.lower() == request.host.lower()


def without_token(request: web.Request) -> str:
    """Where a `?token=` link leads, once the cookie holds the token."""
    return str(request.rel_url.without_query_params("token"))
