"""`skyd token create | list | revoke` through the daemon (skyd.server.tokens holds the
rules). The file is written in a thread: its lock may be held by root's `skyd token`."""

from __future__ import annotations

import asyncio

from skyd.identity import Caller
from skyd.protocol import TokenCreate, TokenList, TokenRecord, TokenRevoke
from skyd.server.dispatch import handles
from skyd.server.services import Services


@handles(TokenCreate)
async def create(s: Services, caller: Caller, op: TokenCreate) -> TokenRecord:
    return await asyncio.to_thread(s.tokens.create, caller, op)


@handles(TokenList)
async def listing(s: Services, caller: Caller, op: TokenList) -> list[TokenRecord]:
    return await asyncio.to_thread(s.tokens.listing, caller)


@handles(TokenRevoke)
async def revoke(s: Services, caller: Caller, op: TokenRevoke) -> TokenRecord:
    return await asyncio.to_thread(s.tokens.revoke, caller, op.name)
