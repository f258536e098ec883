"""The web console in a real headless Chromium against `deepseek_proxy --demo`."""

import json
import uuid

import openai
import pytest
from playwright.sync_api import expect

from helpers import go, last_reply, logged_in, login, send_message, wait_reply_done

ADMIN = ("admin", "admin123")
USER = ("user1", "pass123")

# Records every change of the last reply's answer while it is still streaming.
WATCH_STREAM = """() => {
  window.__seen = [];
  const log = document.querySelector('#chat-log');
  new MutationObserver(() => {
    const reply = [...log.querySelectorAll('article.msg.assistant')].pop();
    if (!reply) return;
    const answer = reply.querySelector('.answer');
    window.__seen.push({len: answer ? answer.textContent.length : 0,
                        busy: reply.getAttribute('aria-busy') === 'true'});
  }).observe(log, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_the_console_is_served_with_strict_security_headers(new_page, base_url):
    w = new_page()
    response = w.page.goto("/")
    assert response.url == f"{base_url}/console/"
    headers = response.headers
    csp = headers["content-security-policy"]
    assert csp.startswith("default-src 'self'")
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"].startswith("text/html")
    js = w.page.request.get("/console/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    missing = w.page.request.get("/console/no-such-file.js")
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "x-frame-options" in missing.headers
    expect(w.page.locator("#login-form").get_by_label("Username", exact=True)).to_be_visible()


def test_a_wrong_password_shows_a_readable_error_and_the_right_one_logs_in(new_page):
    w = new_page()
    login(w.page, "user1", "not-the-password")
    expect(w.page.locator("#login-error")).to_have_text("Wrong username or password.")
    w.page.locator("#login-form").get_by_label("Password", exact=True).fill(USER[1])
    w.page.get_by_role("button", name="Log in", exact=True).click()
    expect(w.page.locator("#whoami")).to_contain_text("user1")
    # The token is in sessionStorage only: no cookie, nothing in localStorage.
    assert w.page.context.cookies() == []
    stored = w.page.evaluate("() => JSON.stringify(Object.keys(localStorage).map(k => localStorage.getItem(k)))")
    assert "eyJ" not in stored
    # An ordinary user sees no Admin tab.
    expect(w.page.locator("#nav-admin")).to_be_hidden()


def test_a_chat_reply_streams_progressively_with_reasoning_folded_and_its_tokens(new_page):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    options = page.locator("#chat-model option")
    ids = options.evaluate_all("(os) => os.map(o => o.value)")
    assert "deepseek-flash" in ids and "deepseek-chat" in ids, ids  # aliases are listed
    page.select_option("#chat-model", "deepseek-flash")
    page.evaluate(WATCH_STREAM)
    send_message(page, "stream please")
    reply = wait_reply_done(page)
    expect(reply.locator(".answer")).to_contain_text("You said: stream please")
    seen = page.evaluate("window.__seen")
    growing = sorted({s["len"] for s in seen if s["busy"] and s["len"] > 0})
    assert len(growing) >= 2, f"the answer did not grow while streaming: {seen}"
    reasoning = reply.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    assert reasoning.get_attribute("open") is None  # folded
    expect(reply.locator(".meta .tokens")).to_contain_text(" in ")
    expect(reply.locator(".error")).to_have_count(0)


def test_thinking_off_sends_disabled_and_shows_no_reasoning(new_page):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data) if r.url.endswith("/v1/chat/completions") else None)
    page.get_by_label("Thinking").uncheck()
    send_message(page, "no thinking")
    reply = wait_reply_done(page)
    expect(reply.locator(".answer")).to_contain_text("no thinking")
    expect(reply.locator("details.reasoning")).to_be_hidden()
    sent = json.loads(bodies[-1])
    assert sent["thinking"] == {"type": "disabled"}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_stop_aborts_the_stream_and_frees_the_slot_at_once(new_page):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    slow = {"armed": True}

    def slow_first(route):
        # The first answer is made long (80 chunks, 100 ms apart) through the
        # fake's per-request script; later ones are left alone.
        if slow["armed"] and route.request.method == "POST":
            slow["armed"] = False
            body = json.loads(route.request.post_data)
            body["_fake"] = {"chunks": 80, "chunk_delay_ms": 100}
            route.continue_(post_data=json.dumps(body))
        else:
            route.continue_()

    page.route("**/v1/chat/completions", slow_first)
    send_message(page, "a long answer " * 20)
    reply = last_reply(page)
    expect(reply.locator(".answer")).not_to_be_empty()
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(reply.locator(".meta .stopped")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    # The next message goes out at once and gets no 429 token_busy.
    statuses = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/v1/chat/completions") else None)
    send_message(page, "right after stop")
    second = wait_reply_done(page)
    expect(second.locator(".answer")).to_contain_text("right after stop")
    expect(second.locator(".error")).to_have_count(0)
    assert statuses == [200], statuses


def test_a_busy_token_shows_a_readable_429(new_page, base_url):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    # Another client with the same login token (the gateway caches one per
    # user) keeps the slot busy while the console sends.
    token = page.evaluate("() => sessionStorage.getItem('dsp_console_token')")
    import threading
    import urllib.request
    started = threading.Event()

    def hold():
        req = urllib.request.Request(
            f"{base_url}/v1/chat/completions", method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            data=json.dumps({"model": "deepseek-flash", "stream": True, "messages": [{"role": "user", "content": "hold"}],
                             "_fake": {"chunks": 30, "chunk_delay_ms": 100}}).encode())
        with urllib.request.urlopen(req) as r:
            r.readline()
            started.set()
            r.read()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert started.wait(10)
    send_message(page, "while busy")
    reply = wait_reply_done(page)
    expect(reply.locator(".error")).to_contain_text("already has a request running")
    t.join(15)


def test_a_hostile_reply_renders_as_text_and_runs_nothing(new_page):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    hostile = "<img src=x onerror=alert(1)>"
    send_message(page, hostile)  # the demo fake echoes it back in its reply
    reply = wait_reply_done(page)
    expect(reply.locator(".answer")).to_contain_text(hostile)
    assert reply.locator("img").count() == 0
    assert page.locator("#chat-log img").count() == 0
    expect(page.locator("#chat-log article.msg.user").last).to_contain_text(hostile)
    assert w.dialogs == []


def test_a_key_made_in_the_console_works_with_the_openai_sdk_and_revoking_it_ends_it(new_page, base_url):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    go(page, "keys")
    name = f"sdk-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name", exact=True).fill(name)
    page.locator("#view-keys").get_by_label("Budget per month (CNY)", exact=True).fill("5")
    page.get_by_role("button", name="Create a key", exact=True).click()
    key_box = page.get_by_label("Key", exact=True)
    expect(key_box).to_be_visible()
    key = key_box.input_value()
    assert key.startswith("sk-dsp-"), key
    created = page.locator("#key-created")
    expect(created).to_contain_text(f'base_url="{base_url}/v1"')
    expect(created).to_contain_text('wire_api = "responses"')
    expect(created).to_contain_text(f"ANTHROPIC_BASE_URL={base_url}/anthropic")
    expect(created).to_contain_text(f"ANTHROPIC_AUTH_TOKEN={key}")
    expect(created).to_contain_text(f"API host: {base_url}")
    expect(page.get_by_role("button", name="Copy key", exact=True)).to_be_visible()
    row = page.locator("#key-list tr", has_text=name)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("¥5.00")  # the key's own budget
    assert key not in page.locator("#key-list").inner_text()  # only the prefix is listed

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": "from the sdk"}])
    assert "from the sdk" in answer.choices[0].message.content

    revoke = row.get_by_role("button", name=f"Revoke key {name}")
    revoke.click()
    expect(revoke).to_have_text("Really revoke?")
    revoke.click()
    expect(page.locator("#key-list tr", has_text=name)).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": "revoked"}])


def test_spend_appears_in_my_usage_after_a_chat(new_page):
    w = new_page()
    logged_in(w.page, *ADMIN)
    page = w.page
    send_message(page, "count my spend")
    reply = wait_reply_done(page)
    cost = reply.locator('[data-testid="reply-cost"]')
    expect(cost).to_contain_text("cost ¥", timeout=8000)
    assert float(cost.get_attribute("data-cost")) > 0
    go(page, "usage")
    month = page.locator('[data-testid="usage.month-cost"]')
    expect(month).to_contain_text("¥")
    value = float(month.inner_text().lstrip("¥$").replace(",", ""))
    assert value > 0, month.inner_text()
    expect(page.locator("#usage-chart canvas")).to_have_count(1)
    tables = page.locator("#usage-body .table-wrap table")
    expect(tables.nth(0)).to_contain_text("deepseek-flash")  # by model
    expect(tables.nth(1)).to_contain_text("login tokens")  # by key: the console used a login token


def test_an_admin_adds_a_user_who_logs_in_and_then_disables_them(new_page):
    admin = new_page()
    logged_in(admin.page, *ADMIN)
    page = admin.page
    expect(page.locator("#nav-admin")).to_be_visible()
    go(page, "admin")
    name = f"alice{uuid.uuid4().hex[:6]}"
    form = page.locator("#user-form")
    form.get_by_label("Username", exact=True).fill(name)
    form.get_by_label("Password", exact=True).fill("correct horse")
    form.get_by_label("Tokens per day", exact=True).fill("500000")
    page.get_by_role("button", name="Add user", exact=True).click()
    row = page.locator(f'#user-list tr[data-user="{name}"]')
    expect(row).to_contain_text("enabled")
    expect(page.locator("#admin-balance")).to_contain_text("110.00")
    expect(page.locator("#admin-active")).to_be_visible()

    # The new user logs in, in a context of their own.
    alice = new_page()
    logged_in(alice.page, name, "correct horse")
    expect(alice.page.locator("#nav-admin")).to_be_hidden()

    row.get_by_role("button", name=f"Disable {name}").click()
    expect(row).to_contain_text("disabled")

    again = new_page()
    login(again.page, name, "correct horse")
    expect(again.page.locator("#login-error")).to_have_text("Wrong username or password.")
    expect(again.page.locator("#whoami")).to_be_hidden()
    # Their open session ends too: the next call is refused and the console returns to the login form.
    alice.page.reload()
    expect(alice.page.locator("#login-form").get_by_label("Username", exact=True)).to_be_visible()


def test_a_key_whose_cache_hits_dropped_is_flagged(new_page, base_url):
    w = new_page()
    logged_in(w.page, *USER)
    page = w.page
    go(page, "keys")
    page.get_by_label("Name", exact=True).fill("n8n-job")
    page.get_by_role("button", name="Create a key", exact=True).click()
    expect(page.locator("#key-list tr", has_text="n8n-job")).to_have_count(1)

    # The gateway's own answer, with this key's alert raised.
    def alert(route):
        response = route.fetch()
        body = response.json()
        for key in body.get("keys", []):
            if key["name"] == "n8n-job":
                key["cache_alert"] = True
        route.fulfill(response=response, json=body)

    page.route("**/v1/usage/me", alert)
    go(page, "usage")
    go(page, "keys")
    row = page.locator("#key-list tr", has_text="n8n-job")
    expect(row.locator(".badge.warn")).to_have_text("⚠ Cache hits dropped")


def test_a_user_over_budget_reads_when_it_resets(new_page):
    admin = new_page()
    logged_in(admin.page, *ADMIN)
    go(admin.page, "admin")
    name = f"bob{uuid.uuid4().hex[:6]}"
    form = admin.page.locator("#user-form")
    form.get_by_label("Username", exact=True).fill(name)
    form.get_by_label("Password", exact=True).fill("correct horse")
    form.get_by_label("Budget per month (CNY)", exact=True).fill("0.000001")
    admin.page.get_by_role("button", name="Add user", exact=True).click()
    expect(admin.page.locator(f'#user-list tr[data-user="{name}"]')).to_contain_text("¥0.000001")

    bob = new_page()
    logged_in(bob.page, name, "correct horse")
    send_message(bob.page, "too expensive")
    reply = wait_reply_done(bob.page)
    expect(reply.locator(".error")).to_contain_text("Your monthly budget is used up. It resets")
    go(bob.page, "usage")
    expect(bob.page.locator("#usage-body .quota").first).to_contain_text("of ¥0.000001 used")


def test_admin_sees_everyones_usage_and_requests_in_flight(new_page, base_url):
    w = new_page()
    logged_in(w.page, *ADMIN)
    page = w.page
    send_message(page, "some usage")
    wait_reply_done(page)
    go(page, "admin")
    page.select_option("#admin-group", "model")
    expect(page.locator("#admin-usage table")).to_contain_text("deepseek-flash")
    page.select_option("#admin-group", "user")
    expect(page.locator("#admin-usage table")).to_contain_text("admin")
    # A request in flight shows up without reloading the page.
    token = page.evaluate("() => sessionStorage.getItem('dsp_console_token')")
    # Earlier tests may still have a user1 stream running (the login cache
    # hands this test the same token, which would then be busy): wait for
    # the gateway to be idle first, as the admin page itself shows it.
    expect(page.locator("#admin-active")).to_contain_text("Nothing is running", timeout=40_000)
    other = new_page()
    logged_in(other.page, *USER)
    other.page.route("**/v1/chat/completions", lambda route: route.continue_(post_data=json.dumps(
        {**json.loads(route.request.post_data), "_fake": {"chunks": 300, "chunk_delay_ms": 500}})))
    # The fake streams one word a chunk at most, and it echoes what it was
    # sent: a 40-word reply at 500 ms a chunk outlives the admin page's 3 s
    # poll by far (a two-word message made a 1 s stream, and a flaky test).
    send_message(other.page, "long running " * 15)
    expect(other.page.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    expect(page.locator("#admin-active table")).to_contain_text("user1", timeout=8000)
    other.page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#admin-active")).to_contain_text("Nothing is running", timeout=8000)
    assert token


def test_switching_the_language_changes_the_labels(new_page):
    w = new_page()
    page = w.page
    page.goto("/console/")
    page.select_option("#lang", "zh")
    expect(page.locator("#login-form").get_by_label("用户名", exact=True)).to_be_visible()
    expect(page.locator("#login-form").get_by_label("密码", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="登录", exact=True)).to_be_visible()
    page.locator("#login-form").get_by_label("用户名", exact=True).fill(USER[0])
    page.locator("#login-form").get_by_label("密码", exact=True).fill(USER[1])
    page.get_by_role("button", name="登录", exact=True).click()
    expect(page.get_by_label("消息", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="发送", exact=True)).to_be_visible()
    expect(page.locator("#nav")).to_contain_text("我的密钥")
    page.select_option("#lang", "en")
    expect(page.get_by_label("Message", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
    # The choice is remembered, and a Chinese browser starts in Chinese.
    page.reload()
    expect(page.locator("#nav")).to_contain_text("My keys")
    zh = new_page(locale="zh-CN")
    zh.page.goto("/console/")
    expect(zh.page.get_by_role("button", name="登录", exact=True)).to_be_visible()


VIEWS = ["chat", "keys", "usage", "admin"]


def no_sideways_scroll(page):
    return page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_every_page_fits_a_phone_and_gets_a_screenshot(new_page, shots):
    phone = new_page(width=375, height=812)
    page = phone.page
    page.goto("/console/")
    expect(page.locator("#login-form").get_by_label("Username", exact=True)).to_be_visible()
    assert no_sideways_scroll(page), "login page scrolls sideways at 375 px"
    page.screenshot(path=str(shots / "phone-login.png"), full_page=True)
    logged_in(page, *ADMIN)
    send_message(page, "hello from a phone")
    wait_reply_done(page)
    for view in VIEWS:
        go(page, view)
        page.wait_for_load_state("networkidle")
        if view == "usage":
            expect(page.locator("#usage-chart canvas")).to_have_count(1)
        assert no_sideways_scroll(page), f"{view} scrolls sideways at 375 px"
        page.screenshot(path=str(shots / f"phone-{view}.png"), full_page=True)


def test_desktop_screenshots_of_each_page(new_page, shots):
    w = new_page(width=1280, height=860)
    page = w.page
    page.goto("/console/")
    page.screenshot(path=str(shots / "login.png"))
    logged_in(page, *ADMIN)
    send_message(page, "In one sentence: what does deepseek_proxy do for a team?")
    reply = wait_reply_done(page)
    reply.locator("details.reasoning summary").click()
    expect(reply.locator('[data-testid="reply-cost"]')).not_to_contain_text("waiting", timeout=8000)
    page.screenshot(path=str(shots / "chat.png"))
    go(page, "keys")
    page.get_by_label("Name", exact=True).fill("cherry-studio")
    page.get_by_role("button", name="Create a key", exact=True).click()
    expect(page.get_by_label("Key", exact=True)).to_be_visible()
    page.screenshot(path=str(shots / "keys.png"), full_page=True)
    go(page, "usage")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "usage.png"), full_page=True)
    go(page, "admin")
    expect(page.locator("#user-list table")).to_be_visible()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "admin.png"), full_page=True)
