#!/usr/bin/env python3
"""End-to-end checks for a running deepseek_proxy gateway.

用法：先启动代理（CI 中为 `deepseek_proxy --demo`），再运行 `uv run python test_proxy.py`
（或 `python test_proxy.py --base-url http://主机:8080`）；每个场景打印 ✅ 或 ❌，有失败时退出码为 1。

The script talks to a live deployment over HTTP, exactly as a client would, and
walks through the scenarios promised by the README:

  1. login             good credentials give a token, bad ones a 401 error body
  2. login cache       repeated logins within 60 s return the same token
  3. streaming         SSE chunks, `data: [DONE]`, non-empty text (httpx)
  4. per-token lock    a second request while the first is open gets 429 token_busy
  5. multi-user        two users' tokens stream at the same time
  6. burst             10 simultaneous requests with one token: 1 x 200, 9 x 429
  7. unauthorized      no token / a garbage token give 401 + WWW-Authenticate
  8. openai SDK        chat.completions (plain and streamed), models.list() with the
                       aliases, and the retired name `deepseek-chat` served by deepseek-flash
  9. Responses API     openai `responses.create`, plain and streamed: the text, the
                       event sequence numbers, and `usage` in the final response
 10. Anthropic API     anthropic `messages.create` and `messages.stream` at /anthropic
                       (token as x-api-key): the text, and usage in the final message
 11. refusals in SDKs  a busy token is `openai.RateLimitError` (chat and responses) and
                       `anthropic.RateLimitError`, with `x-should-retry: true`; a bad
                       token is `anthropic.AuthenticationError` / `openai.AuthenticationError`
                       with `x-should-retry: false`
 12. LangChain         ChatOpenAI invoke and stream (skipped without langchain-openai)
 13. personal API key  POST /v1/keys makes an sk-dsp- key (shown once, listed by prefix);
                       the key works with the openai SDK (chat and responses) and the
                       anthropic SDK (messages.create, as x-api-key); after
                       DELETE /v1/keys/{id} it is openai.AuthenticationError and
                       anthropic.AuthenticationError (401) within 1 s

Each scenario prints `✅ name` or `❌ name: reason` (an indented detail line may
follow), and the last line is `N passed, M failed`.

Uses httpx, openai (>= 1.66, for the Responses API), anthropic and the standard
library; without the anthropic package its scenarios are skipped (set
TEST_PROXY_REQUIRE_ANTHROPIC=1 to make that a failure, as CI does). Scenario 11
holds a token's slot with a slow stream: it asks for a long answer and adds
`"_fake": {"chunks": 30, "chunk_delay_ms": 100}`, which tells the fake behind
`--demo` to stream slowly. Options: --base-url
(default $DEEPSEEK_PROXY_URL or http://localhost:8080), --user/--password,
--user2/--password2, --model, --timeout (seconds per HTTP request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import httpx

PROMPT = "用一两句话介绍一下 Rust 编程语言。"
BURST = 10  # requests fired at once in the burst scenario
SETTLE_S = 0.3  # pause between back-to-back requests with one token (lets the gateway free the slot)


@dataclass
class Ctx:
    base: str
    user: str
    password: str
    user2: str
    password2: str
    model: str
    timeout: float

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def busy_timeout(self) -> float:
        """How long a request that should be refused at once (429) may take."""
        return min(10.0, self.timeout)


class Failed(Exception):
    """A scenario's expectation did not hold; the message says which."""


# ---------------------------------------------------------------------------
# helpers


def expect(cond: Any, msg: str) -> None:
    if not cond:
        raise Failed(msg)


def short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def settle() -> None:
    time.sleep(SETTLE_S)


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat_body(ctx: Ctx, stream: bool) -> Dict[str, Any]:
    return {
        "model": ctx.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    }


def login(ctx: Ctx, user: str, password: str) -> str:
    r = httpx.post(
        ctx.url("/auth/login"),
        json={"username": user, "password": password},
        timeout=ctx.timeout,
    )
    expect(r.status_code == 200, f"login as {user!r}: HTTP {r.status_code} {short(r.text)}")
    token = r.json().get("token")
    expect(isinstance(token, str) and token, f"login as {user!r}: no token in {short(r.text)}")
    return token


def error_body(raw: bytes, where: str) -> Dict[str, Any]:
    """Parses an error response and checks it is {"error":{"message","type","code"}}."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise Failed(f"{where}: error body is not JSON: {short(raw.decode('utf-8', 'replace'))}")
    err = body.get("error") if isinstance(body, dict) else None
    expect(isinstance(err, dict), f"{where}: no \"error\" object in {short(json.dumps(body))}")
    for field in ("message", "type", "code"):
        expect(
            isinstance(err.get(field), str) and err[field],
            f"{where}: error.{field} missing or empty in {short(json.dumps(body))}",
        )
    return err


def expect_bearer_challenge(headers: httpx.Headers, where: str) -> None:
    challenge = headers.get("www-authenticate", "")
    expect(
        challenge.lower().startswith("bearer"),
        f"{where}: WWW-Authenticate is {challenge!r}, expected 'Bearer…'",
    )


class Sse:
    """Collects an OpenAI-style SSE stream fed to it line by line."""

    def __init__(self) -> None:
        self.parts: List[str] = []
        self.chunks = 0
        self.done = False

    def feed(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.startswith("data:"):
            return  # blank separators, ": keep-alive" comments, event:/id: fields
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            self.done = True
            return
        chunk = json.loads(data)
        if isinstance(chunk, dict) and chunk.get("error"):
            raise Failed(f"error event inside the stream: {short(json.dumps(chunk['error']))}")
        self.chunks += 1
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                self.parts.append(piece)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def check(self, where: str) -> None:
        expect(self.done, f"{where}: stream ended without 'data: [DONE]'")
        expect(self.text.strip(), f"{where}: stream carried no content ({self.chunks} chunks)")


async def read_sse(r: httpx.Response, where: str) -> Sse:
    ctype = r.headers.get("content-type", "")
    expect(ctype.startswith("text/event-stream"), f"{where}: content-type is {ctype!r}")
    sse = Sse()
    async for line in r.aiter_lines():
        sse.feed(line)
        if sse.done:
            break
    return sse


async def expect_status(r: httpx.Response, status: int, where: str) -> None:
    """For a response opened with .stream(): fail with its body if the status is wrong."""
    if r.status_code != status:
        await r.aread()
        raise Failed(f"{where}: HTTP {r.status_code} (expected {status}) {short(r.text)}")


def expect_token_busy(r: httpx.Response, where: str) -> None:
    expect(r.status_code == 429, f"{where}: HTTP {r.status_code} (expected 429) {short(r.text)}")
    retry_after = r.headers.get("retry-after")
    expect(retry_after is not None, f"{where}: 429 without a Retry-After header")
    expect(retry_after.strip().isdigit(), f"{where}: Retry-After is {retry_after!r}, not seconds")
    err = error_body(r.content, where)
    expect(err["type"] == "rate_limit_error", f"{where}: error.type is {err['type']!r}")
    expect(err["code"] == "token_busy", f"{where}: error.code is {err['code']!r}")


# ---------------------------------------------------------------------------
# scenarios (each returns an optional detail line, or raises)


def scenario_login(ctx: Ctx) -> str:
    r = httpx.post(
        ctx.url("/auth/login"),
        json={"username": ctx.user, "password": ctx.password},
        timeout=ctx.timeout,
    )
    expect(r.status_code == 200, f"good credentials: HTTP {r.status_code} {short(r.text)}")
    body = r.json()
    expect(isinstance(body.get("token"), str) and body["token"], f"no token in {short(r.text)}")
    expect(body.get("token_type") == "Bearer", f"token_type is {body.get('token_type')!r}")
    expires = body.get("expires_in")
    expect(
        isinstance(expires, int) and not isinstance(expires, bool) and expires > 0,
        f"expires_in is {expires!r}",
    )

    wrong = httpx.post(
        ctx.url("/auth/login"),
        json={"username": ctx.user, "password": ctx.password + "-wrong"},
        timeout=ctx.timeout,
    )
    expect(wrong.status_code == 401, f"wrong password: HTTP {wrong.status_code} (expected 401)")
    wrong_err = error_body(wrong.content, "wrong password")

    nobody = httpx.post(
        ctx.url("/auth/login"),
        json={"username": f"no-such-user-{uuid.uuid4().hex[:8]}", "password": ctx.password},
        timeout=ctx.timeout,
    )
    expect(nobody.status_code == 401, f"unknown user: HTTP {nobody.status_code} (expected 401)")
    nobody_err = error_body(nobody.content, "unknown user")
    expect(
        wrong_err == nobody_err,
        "wrong password and unknown user give different errors "
        f"({wrong_err} vs {nobody_err}); that tells which usernames exist",
    )
    return f"token_type {body['token_type']}, expires_in {expires}s; bad login → {wrong_err['code']}"


def scenario_login_cache(ctx: Ctx) -> str:
    first = login(ctx, ctx.user, ctx.password)
    second = login(ctx, ctx.user, ctx.password)
    if first != second:
        # The 60 s window may have just rolled over between the two calls;
        # a third login must then match the second.
        third = login(ctx, ctx.user, ctx.password)
        expect(third == second, "three logins in a row returned three different tokens")
    return "repeat logins returned the same token"


def scenario_streaming(ctx: Ctx) -> str:
    token = login(ctx, ctx.user, ctx.password)
    settle()
    with httpx.Client(timeout=ctx.timeout) as client:
        with client.stream(
            "POST", ctx.url("/chat/completions"), headers=bearer(token), json=chat_body(ctx, True)
        ) as r:
            if r.status_code != 200:
                r.read()
                raise Failed(f"HTTP {r.status_code} {short(r.text)}")
            ctype = r.headers.get("content-type", "")
            expect(ctype.startswith("text/event-stream"), f"content-type is {ctype!r}")
            sse = Sse()
            for line in r.iter_lines():
                sse.feed(line)
                if sse.done:
                    break
    sse.check("stream")
    return f"{sse.chunks} chunks: {short(sse.text, 60)}"


def scenario_token_lock(ctx: Ctx) -> str:
    token = login(ctx, ctx.user, ctx.password)
    settle()

    async def run() -> str:
        async with httpx.AsyncClient(timeout=ctx.timeout) as client:
            url = ctx.url("/chat/completions")
            async with client.stream("POST", url, headers=bearer(token), json=chat_body(ctx, True)) as first:
                await expect_status(first, 200, "first request")
                # The first answer is open and unread, so it still holds the token's slot.
                try:
                    second = await client.post(
                        url,
                        headers=bearer(token),
                        json=chat_body(ctx, False),
                        timeout=ctx.busy_timeout,
                    )
                except httpx.TimeoutException:
                    raise Failed(
                        f"second request got no answer within {ctx.busy_timeout:.0f}s while the "
                        "first was open (queued instead of refused with 429?)"
                    )
                expect_token_busy(second, "second request")
                sse = await read_sse(first, "first request")
                sse.check("first request")

            await asyncio.sleep(SETTLE_S)
            async with client.stream("POST", url, headers=bearer(token), json=chat_body(ctx, True)) as again:
                await expect_status(again, 200, "request after the first finished")
                sse = await read_sse(again, "request after the first finished")
                sse.check("request after the first finished")
            return f"busy → 429 (Retry-After: {second.headers['retry-after']}); slot freed afterwards"

    return asyncio.run(run())


def scenario_multi_user(ctx: Ctx) -> str:
    token1 = login(ctx, ctx.user, ctx.password)
    token2 = login(ctx, ctx.user2, ctx.password2)
    expect(token1 != token2, f"{ctx.user!r} and {ctx.user2!r} were given the same token")
    settle()

    async def one(client: httpx.AsyncClient, token: str, who: str) -> Dict[str, float]:
        t0 = time.monotonic()
        async with client.stream(
            "POST", ctx.url("/chat/completions"), headers=bearer(token), json=chat_body(ctx, True)
        ) as r:
            await expect_status(r, 200, who)
            head = time.monotonic()
            sse = await read_sse(r, who)
        sse.check(who)
        return {"start": t0, "head": head, "end": time.monotonic()}

    async def run() -> str:
        async with httpx.AsyncClient(timeout=ctx.timeout) as client:
            a, b = await asyncio.gather(
                one(client, token1, ctx.user), one(client, token2, ctx.user2)
            )
        # Were both answers in flight at the same time? A gateway that served
        # users one after another would open the second only after the first ended.
        expect(
            a["head"] < b["end"] and b["head"] < a["end"],
            "the two answers did not overlap: the gateway served the users one after the other",
        )
        wall = max(a["end"], b["end"]) - min(a["start"], b["start"])
        return f"both users streamed 200 concurrently in {wall:.2f}s"

    return asyncio.run(run())


def scenario_burst(ctx: Ctx) -> str:
    token = login(ctx, ctx.user, ctx.password)
    settle()

    async def run() -> str:
        answered = 0
        all_answered = asyncio.Event()
        limits = httpx.Limits(max_connections=BURST + 5, max_keepalive_connections=BURST + 5)

        async def one(client: httpx.AsyncClient, i: int) -> Any:
            nonlocal answered
            async with client.stream(
                "POST",
                ctx.url("/chat/completions"),
                headers=bearer(token),
                json=chat_body(ctx, True),
                timeout=ctx.timeout,
            ) as r:
                answered += 1
                if answered == BURST:
                    all_answered.set()
                if r.status_code == 200:
                    # Keep the winner open until every other request has its answer.
                    try:
                        await asyncio.wait_for(all_answered.wait(), timeout=ctx.busy_timeout)
                    except asyncio.TimeoutError:
                        pass
                    sse = await read_sse(r, f"request {i}")
                    sse.check(f"request {i} (the one let through)")
                else:
                    await r.aread()
                return r

        async with httpx.AsyncClient(limits=limits) as client:
            results = await asyncio.gather(
                *(one(client, i) for i in range(BURST)), return_exceptions=True
            )
        for res in results:
            if isinstance(res, BaseException):
                raise res
        counts: Dict[int, int] = {}
        for r in results:
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
        expect(
            counts.get(200) == 1 and counts.get(429) == BURST - 1,
            f"expected 1×200 and {BURST - 1}×429, got "
            + ", ".join(f"{n}×{code}" for code, n in sorted(counts.items())),
        )
        for i, r in enumerate(results):
            if r.status_code == 429:
                expect_token_busy(r, f"request {i}")
        return f"1×200, {BURST - 1}×429 token_busy"

    return asyncio.run(run())


def scenario_unauthorized(ctx: Ctx) -> str:
    with httpx.Client(timeout=ctx.timeout) as client:
        health = client.get(ctx.url("/healthz"))
        expect(health.status_code == 200, f"/healthz without a token: HTTP {health.status_code}")

        cases = [
            ("no token", "POST", "/chat/completions", {}),
            ("garbage token", "POST", "/chat/completions", bearer("not-a-real-token." + uuid.uuid4().hex)),
            ("no token on /v1/models", "GET", "/v1/models", {}),
        ]
        codes = []
        for where, method, path, headers in cases:
            body = chat_body(ctx, False) if method == "POST" else None
            r = client.request(method, ctx.url(path), headers=headers, json=body)
            expect(r.status_code == 401, f"{where}: HTTP {r.status_code} (expected 401) {short(r.text)}")
            expect_bearer_challenge(r.headers, where)
            codes.append(error_body(r.content, where)["code"])
    return "401 codes: " + ", ".join(codes) + "; /healthz open"


def scenario_openai_sdk(ctx: Ctx) -> str:
    import openai  # imported here so scenarios 1-7 still run without the SDK

    token = login(ctx, ctx.user, ctx.password)
    settle()
    client = openai.OpenAI(
        base_url=ctx.url("/v1"), api_key=token, timeout=ctx.timeout, max_retries=0
    )
    try:
        messages = [{"role": "user", "content": PROMPT}]
        reply = client.chat.completions.create(model=ctx.model, messages=messages)
        expect(reply.choices, "non-stream: no choices")
        text = reply.choices[0].message.content or ""
        expect(text.strip(), "non-stream: empty message content")

        settle()
        parts: List[str] = []
        with client.chat.completions.create(model=ctx.model, messages=messages, stream=True) as stream:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
        expect("".join(parts).strip(), "stream: no content in the chunks")

        settle()
        ids = [m.id for m in client.models.list()]
        expect(ids, "models.list() returned no models")
        for alias in ("deepseek-chat", "deepseek-reasoner"):
            expect(alias in ids, f"models.list() does not list the alias {alias!r}: {ids}")

        # The retired name still works: the gateway's alias has deepseek-flash serve it.
        settle()
        old = client.chat.completions.create(model="deepseek-chat", messages=messages)
        expect((old.choices[0].message.content or "").strip(), "deepseek-chat: empty content")
        expect(
            old.model == "deepseek-flash",
            f"deepseek-chat: the answer's model is {old.model!r}, expected 'deepseek-flash' (the alias)",
        )
    finally:
        client.close()
    return f"create / stream / models.list ok; models: {', '.join(ids)}; deepseek-chat → {old.model}"


def openai_client(ctx: Ctx, token: str) -> Any:
    import openai

    client = openai.OpenAI(
        base_url=ctx.url("/v1"), api_key=token, timeout=ctx.timeout, max_retries=0
    )
    expect(
        hasattr(client, "responses"),
        f"openai {openai.__version__} has no Responses API; pip install 'openai>=1.66'",
    )
    return client


def expect_usage(usage: Any, where: str, fields: List[str]) -> Dict[str, int]:
    expect(usage is not None, f"{where}: no usage")
    counts = {}
    for field in fields:
        value = getattr(usage, field, None)
        expect(
            isinstance(value, int) and value > 0,
            f"{where}: usage.{field} is {value!r}, expected a positive count",
        )
        counts[field] = value
    return counts


def scenario_responses(ctx: Ctx) -> str:
    token = login(ctx, ctx.user, ctx.password)
    settle()
    client = openai_client(ctx, token)
    try:
        whole = client.responses.create(model=ctx.model, input=PROMPT)
        expect(whole.status == "completed", f"non-stream: status is {whole.status!r}")
        expect((whole.output_text or "").strip(), "non-stream: empty output_text")
        expect_usage(whole.usage, "non-stream", ["input_tokens", "output_tokens"])

        settle()
        events = []
        parts: List[str] = []
        with client.responses.create(model=ctx.model, input=PROMPT, stream=True) as stream:
            for event in stream:
                events.append(event)
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        expect(events, "stream: no events")
        numbers = [e.sequence_number for e in events]
        expect(
            numbers == list(range(numbers[0], numbers[0] + len(numbers))),
            f"stream: sequence numbers are not consecutive: {numbers[:12]}…",
        )
        last = events[-1]
        expect(
            last.type == "response.completed",
            f"stream: last event is {last.type!r}, expected 'response.completed'",
        )
        text = "".join(parts)
        expect(text.strip(), "stream: no output_text.delta events with text")
        expect(
            text == last.response.output_text,
            "stream: the deltas do not add up to the final response's output_text",
        )
        usage = expect_usage(last.response.usage, "stream", ["input_tokens", "output_tokens"])
    finally:
        client.close()
    return (
        f"create ok; stream: {len(events)} events, ends response.completed, "
        f"usage in={usage['input_tokens']} out={usage['output_tokens']}"
    )


def anthropic_client(ctx: Ctx, token: str) -> Any:
    import anthropic

    # api_key is sent as x-api-key, as Claude Code does with ANTHROPIC_API_KEY.
    return anthropic.Anthropic(
        base_url=ctx.url("/anthropic"), api_key=token, timeout=ctx.timeout, max_retries=0
    )


def anthropic_missing() -> Optional[str]:
    try:
        import anthropic  # noqa: F401
    except ImportError:
        if os.environ.get("TEST_PROXY_REQUIRE_ANTHROPIC"):
            raise
        return SKIPPED + " (pip install anthropic to run it)"
    return None


def scenario_anthropic(ctx: Ctx) -> str:
    missing = anthropic_missing()
    if missing:
        return missing
    token = login(ctx, ctx.user, ctx.password)
    settle()
    client = anthropic_client(ctx, token)
    try:
        messages = [{"role": "user", "content": PROMPT}]
        message = client.messages.create(model=ctx.model, max_tokens=512, messages=messages)
        text = "".join(b.text for b in message.content if b.type == "text")
        expect(text.strip(), f"create: no text block in {[b.type for b in message.content]}")
        expect_usage(message.usage, "create", ["input_tokens", "output_tokens"])

        # Claude Code's names are accepted too (served by deepseek-flash / deepseek-v4-pro).
        settle()
        named = client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=messages)
        expect(
            any(b.type == "text" and b.text.strip() for b in named.content),
            "create with claude-sonnet-4-5: no text",
        )

        settle()
        with client.messages.stream(model=ctx.model, max_tokens=512, messages=messages) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        expect(streamed.strip(), "stream: no text")
        final_text = "".join(b.text for b in final.content if b.type == "text")
        expect(streamed == final_text, "stream: the text deltas do not add up to the final message")
        usage = expect_usage(final.usage, "stream", ["input_tokens", "output_tokens"])
        expect(final.stop_reason == "end_turn", f"stream: stop_reason is {final.stop_reason!r}")
    finally:
        client.close()
    return (
        f"messages.create (deepseek-flash, claude-sonnet-4-5) / messages.stream ok; final usage in={usage['input_tokens']} "
        f"out={usage['output_tokens']}"
    )


def expect_sdk_refusal(
    call: Callable[[], Any], exc_type: type, where: str, status: int, should_retry: str
) -> Any:
    """Runs an SDK call that must raise `exc_type`; checks status and x-should-retry."""
    try:
        call()
    except exc_type as exc:
        response = exc.response
        expect(
            response.status_code == status,
            f"{where}: HTTP {response.status_code} (expected {status})",
        )
        got = response.headers.get("x-should-retry")
        expect(
            got == should_retry,
            f"{where}: x-should-retry is {got!r}, expected {should_retry!r}",
        )
        return response
    except Exception as exc:  # the wrong exception class is the failure being tested
        raise Failed(f"{where}: raised {type(exc).__name__} ({short(str(exc))}), expected {exc_type.__name__}")
    raise Failed(f"{where}: succeeded, expected {exc_type.__name__}")


def scenario_sdk_refusals(ctx: Ctx) -> str:
    import openai

    missing = anthropic_missing()
    if missing:
        return missing
    import anthropic

    token = login(ctx, ctx.user, ctx.password)
    settle()
    oai = openai_client(ctx, token)
    claude = anthropic_client(ctx, token)
    messages = [{"role": "user", "content": PROMPT}]
    slow = dict(chat_body(ctx, True))
    slow["messages"] = [{"role": "user", "content": PROMPT + " 请详细展开，写长一些。"}]
    slow["_fake"] = {"chunks": 30, "chunk_delay_ms": 100}
    seen: List[str] = []
    try:
        with httpx.Client(timeout=ctx.timeout) as http:
            with http.stream(
                "POST", ctx.url("/chat/completions"), headers=bearer(token), json=slow
            ) as held:
                if held.status_code != 200:
                    held.read()
                    raise Failed(f"the request holding the slot: HTTP {held.status_code} {short(held.text)}")
                # The slow stream is open and unread: the token's slot is taken.
                r = expect_sdk_refusal(
                    lambda: oai.chat.completions.create(model=ctx.model, messages=messages),
                    openai.RateLimitError, "openai chat, busy token", 429, "true",
                )
                err = error_body(r.content, "openai chat, busy token")
                expect(err["code"] == "token_busy", f"openai chat: error.code is {err['code']!r}")
                seen.append("openai chat → RateLimitError")

                r = expect_sdk_refusal(
                    lambda: oai.responses.create(model=ctx.model, input=PROMPT),
                    openai.RateLimitError, "openai responses, busy token", 429, "true",
                )
                expect(r.headers.get("retry-after") == "1", "responses: Retry-After is not 1")
                seen.append("responses → RateLimitError")

                r = expect_sdk_refusal(
                    lambda: claude.messages.create(model=ctx.model, max_tokens=64, messages=messages),
                    anthropic.RateLimitError, "anthropic, busy token", 429, "true",
                )
                body = r.json()
                expect(
                    body.get("type") == "error"
                    and (body.get("error") or {}).get("type") == "rate_limit_error",
                    f"anthropic, busy token: body is not Anthropic's rate_limit_error: {short(r.text)}",
                )
                seen.append("anthropic → RateLimitError")

                # Read the slow stream to its end: the slot is then free again.
                sse = Sse()
                for line in held.iter_lines():
                    sse.feed(line)
                    if sse.done:
                        break
                sse.check("the request holding the slot")
    finally:
        oai.close()
        claude.close()

    bad = "not-a-real-token." + uuid.uuid4().hex
    bad_claude = anthropic_client(ctx, bad)
    bad_oai = openai_client(ctx, bad)
    try:
        r = expect_sdk_refusal(
            lambda: bad_claude.messages.create(model=ctx.model, max_tokens=64, messages=messages),
            anthropic.AuthenticationError, "anthropic, bad token", 401, "false",
        )
        expect(
            (r.json().get("error") or {}).get("type") == "authentication_error",
            f"anthropic, bad token: body is {short(r.text)}",
        )
        seen.append("bad token → anthropic.AuthenticationError")
        expect_sdk_refusal(
            lambda: bad_oai.responses.create(model=ctx.model, input=PROMPT),
            openai.AuthenticationError, "openai responses, bad token", 401, "false",
        )
        seen.append("openai.AuthenticationError")
    finally:
        bad_claude.close()
        bad_oai.close()
    return "; ".join(seen)


def scenario_langchain(ctx: Ctx) -> str:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        if os.environ.get("TEST_PROXY_REQUIRE_LANGCHAIN"):
            raise
        return SKIPPED + " (pip install langchain-openai to run it)"

    token = login(ctx, ctx.user, ctx.password)
    settle()
    llm = ChatOpenAI(model=ctx.model, base_url=ctx.url("/v1"), api_key=token,
                     timeout=ctx.timeout, max_retries=0)
    text = llm.invoke(PROMPT).content
    expect(isinstance(text, str) and text.strip(), "invoke: empty content")
    settle()
    streamed = "".join(str(chunk.content) for chunk in llm.stream(PROMPT))
    expect(streamed.strip(), "stream: no content")
    return "invoke / stream ok"


def scenario_api_key(ctx: Ctx) -> str:
    import openai

    missing = anthropic_missing()
    if missing:
        return missing
    import anthropic

    token = login(ctx, ctx.user, ctx.password)
    with httpx.Client(timeout=ctx.timeout) as http:
        r = http.post(ctx.url("/v1/keys"), headers=bearer(token), json={"name": "test_proxy"})
        expect(r.status_code == 201, f"POST /v1/keys: HTTP {r.status_code} {short(r.text)}")
        made = r.json()
        key, key_id, prefix = made.get("key"), made.get("id"), made.get("prefix")
        expect(
            isinstance(key, str) and key.startswith("sk-dsp-") and len(key) == 50,
            f"POST /v1/keys: key is not sk-dsp- + 43 characters: {short(str(key), 20)}",
        )
        expect(isinstance(key_id, str) and key_id, f"POST /v1/keys: no id in {short(r.text)}")
        expect(
            isinstance(prefix, str) and key.startswith(prefix) and len(prefix) < len(key),
            f"POST /v1/keys: prefix {prefix!r} is not the start of the key",
        )
        expect(made.get("max_in_flight") == 1, f"max_in_flight is {made.get('max_in_flight')!r}, expected 1")
        revoked = False
        try:
            listed = http.get(ctx.url("/v1/keys"), headers=bearer(token))
            expect(listed.status_code == 200, f"GET /v1/keys: HTTP {listed.status_code} {short(listed.text)}")
            expect(key not in listed.text, "GET /v1/keys shows the key itself; it must show only the prefix")
            mine = [k for k in listed.json().get("keys", []) if k.get("id") == key_id]
            expect(mine and mine[0].get("prefix") == prefix, f"GET /v1/keys does not list {key_id}")

            oai = openai_client(ctx, key)
            claude = anthropic_client(ctx, key)  # sent as x-api-key
            messages = [{"role": "user", "content": PROMPT}]
            try:
                settle()
                reply = oai.chat.completions.create(model=ctx.model, messages=messages)
                expect((reply.choices[0].message.content or "").strip(), "openai chat with the key: empty content")
                settle()
                resp = oai.responses.create(model=ctx.model, input=PROMPT)
                expect((resp.output_text or "").strip(), "openai responses with the key: empty output_text")
                settle()
                message = claude.messages.create(model=ctx.model, max_tokens=256, messages=messages)
                expect(
                    any(b.type == "text" and b.text.strip() for b in message.content),
                    "anthropic messages.create with the key: no text",
                )

                gone = http.delete(ctx.url(f"/v1/keys/{key_id}"), headers=bearer(token))
                expect(gone.status_code == 200, f"DELETE /v1/keys/{key_id}: HTTP {gone.status_code} {short(gone.text)}")
                revoked = True
                t0 = time.monotonic()
                # Revoked through this gateway: refused from the next request on; allow 1 s.
                while True:
                    try:
                        expect_sdk_refusal(
                            lambda: oai.chat.completions.create(model=ctx.model, messages=messages),
                            openai.AuthenticationError, "openai, revoked key", 401, "false",
                        )
                        break
                    except Failed:
                        if time.monotonic() - t0 > 1.0:
                            raise
                        time.sleep(0.1)
                r = expect_sdk_refusal(
                    lambda: claude.messages.create(model=ctx.model, max_tokens=64, messages=messages),
                    anthropic.AuthenticationError, "anthropic, revoked key", 401, "false",
                )
                expect(
                    (r.json().get("error") or {}).get("type") == "authentication_error",
                    f"anthropic, revoked key: body is {short(r.text)}",
                )
                took = time.monotonic() - t0
                expect(took <= 1.0, f"the revoked key was refused only after {took:.2f}s (bound: 1 s)")
            finally:
                oai.close()
                claude.close()
        finally:
            if not revoked:  # do not leave a working key behind on a failure
                http.delete(ctx.url(f"/v1/keys/{key_id}"), headers=bearer(token))
    return (
        f"{prefix}… made; openai chat + responses and anthropic messages ok; "
        f"revoked → 401 AuthenticationError in both SDKs after {took * 1000:.0f} ms"
    )


SKIPPED = "skipped"


# ---------------------------------------------------------------------------
# runner


def check(name: str, fn: Callable[[], Optional[str]], hard_timeout: float) -> Optional[bool]:
    """Runs one scenario with a hard time limit and prints ✅ or ❌ (None: skipped)."""
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["detail"] = fn()
        except BaseException as exc:  # report everything, including SystemExit from a library
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join(hard_timeout)
    if worker.is_alive():
        print(f"❌ {name}: no result within {hard_timeout:.0f}s (hard timeout)", flush=True)
        return False
    exc = outcome.get("error")
    if exc is not None:
        reason = str(exc) if isinstance(exc, Failed) else f"{type(exc).__name__}: {exc}"
        print(f"❌ {name}: {short(reason, 400)}", flush=True)
        return False
    if str(outcome.get("detail") or "").startswith(SKIPPED):
        print(f"⏭  {name}: {outcome['detail']}", flush=True)
        return None
    print(f"✅ {name}", flush=True)
    if outcome.get("detail"):
        print(f"   {outcome['detail']}", flush=True)
    return True


def parse_args(argv: Optional[List[str]]) -> Ctx:
    p = argparse.ArgumentParser(description="End-to-end checks for a running deepseek_proxy.")
    p.add_argument(
        "--base-url",
        default=os.environ.get("DEEPSEEK_PROXY_URL") or "http://localhost:8080",
        help="gateway address (default: $DEEPSEEK_PROXY_URL or http://localhost:8080)",
    )
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="admin123")
    p.add_argument("--user2", default="user1", help="second user, for the multi-user scenario")
    p.add_argument("--password2", default="pass123")
    p.add_argument("--model", default="deepseek-flash")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    a = p.parse_args(argv)
    base = a.base_url.rstrip("/")
    if base.endswith("/v1"):  # accept the OpenAI-style base URL too
        base = base[: -len("/v1")]
    return Ctx(base, a.user, a.password, a.user2, a.password2, a.model, a.timeout)


def main(argv: Optional[List[str]] = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8")  # Windows PowerShell defaults to a legacy code page
        except (AttributeError, ValueError):
            pass
    ctx = parse_args(argv)
    print(f"deepseek_proxy at {ctx.base}, model {ctx.model}", flush=True)

    scenarios = [
        ("登录认证 / login", scenario_login),
        ("登录缓存 / login cache", scenario_login_cache),
        ("流式对话 / streaming", scenario_streaming),
        ("Token 串行限流 / same-token concurrency", scenario_token_lock),
        ("多用户并发 / multi-user concurrency", scenario_multi_user),
        ("基础并发测试 / burst of 10", scenario_burst),
        ("未授权拦截 / unauthorized", scenario_unauthorized),
        ("openai SDK", scenario_openai_sdk),
        ("Responses API (openai SDK)", scenario_responses),
        ("Anthropic API (anthropic SDK)", scenario_anthropic),
        ("SDK 异常 / refusals as SDK exceptions", scenario_sdk_refusals),
        ("LangChain", scenario_langchain),
        ("个人 API Key / personal API key", scenario_api_key),
    ]
    # Every request has its own --timeout; this backstop catches anything that hangs anyway.
    hard_timeout = 3 * ctx.timeout + 15
    passed = failed = skipped = 0
    for name, fn in scenarios:
        result = check(name, lambda fn=fn: fn(ctx), hard_timeout)
        if result is None:
            skipped += 1
        elif result:
            passed += 1
        else:
            failed += 1
    tail = f", {skipped} skipped" if skipped else ""
    print(f"{passed} passed, {failed} failed{tail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
