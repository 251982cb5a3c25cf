"""The coordinator's interceptors wrap a method's handler once and reuse it while the servicer
hands out the same handler; the check inside still runs on every call, so a caller refused after
an allowed one on the same method is still refused (the cache holds code, never a verdict)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from coordinator.wrapping import WrappingInterceptor

pytestmark = pytest.mark.unit


class Counting(WrappingInterceptor):
    """Wraps a unary handler with a check that refuses callers named in `refused`."""

    def __init__(self) -> None:
        super().__init__()
        self.wraps = 0
        self.refused: set[str] = set()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wraps += 1
        inner = handler.unary_unary

        async def checked(request: Any, context: Any) -> Any:
            if context in self.refused:
                raise PermissionError(f"{context} may not call {method}")
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(checked)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method


async def _echo(request: Any, context: Any) -> Any:
    return request


def test_a_handler_is_wrapped_once_per_method_and_checked_on_every_call() -> None:
    interceptor = Counting()
    handlers = {"/a": grpc.unary_unary_rpc_method_handler(_echo)}

    async def continuation(details: Any) -> Any:
        return handlers.get(details.method)

    async def call(method: str, caller: str) -> Any:
        handler = await interceptor.intercept_service(continuation, Details(method))
        return await handler.unary_unary("ping", caller)

    async def scenario() -> None:
        first = await interceptor.intercept_service(continuation, Details("/a"))
        assert await call("/a", "site-a") == "ping"
        assert await interceptor.intercept_service(continuation, Details("/a")) is first
        assert interceptor.wraps == 1
        interceptor.refused.add("operator")
        with pytest.raises(PermissionError):  # the same cached handler, a fresh check
            await call("/a", "operator")
        handlers["/a"] = grpc.unary_unary_rpc_method_handler(_echo)  # a new servicer handler
        assert await interceptor.intercept_service(continuation, Details("/a")) is not first
        assert interceptor.wraps == 2
        assert await interceptor.intercept_service(continuation, Details("/none")) is None

    asyncio.run(scenario())
