"""Dashboard pages following the HTTP side, and a scraper, in one process of their own
(profiling.bench_http starts it beside the load): prints what they received, and the CPU
this process used, as JSON.

    python -m profiling.http_pages BASE_URL PAGES SECONDS
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys


async def follow_pages(base: str, pages: int, seconds: float) -> dict:
    """`pages` dashboards following /api/events (each event's JSON parsed, as a page does)
    and a scrape of /metrics every second, for `seconds`."""
    import aiohttp
    counts = {"events": 0, "bytes": 0, "scrapes": 0}
    cpu0 = _cpu()

    async def page(session: aiohttp.ClientSession) -> None:
        async with session.get(base + "/api/events") as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    json.loads(line[6:])
                    counts["events"] += 1
                    counts["bytes"] += len(line)

    async def scraper(session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(base + "/metrics") as r:
                await r.read()
            counts["scrapes"] += 1
            await asyncio.sleep(1.0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.ensure_future(page(session)) for _ in range(pages)]
        tasks.append(asyncio.ensure_future(scraper(session)))
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    counts["cpu_cores"] = (_cpu() - cpu0) / seconds
    return counts


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    base, pages, seconds = argv[0], int(argv[1]), float(argv[2])
    import uvloop
    counts = uvloop.run(follow_pages(base, pages, seconds))
    counts["seconds"] = seconds
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
