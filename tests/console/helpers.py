"""Steps the tests share: logging in, chatting, moving between sections."""

import time

from playwright.sync_api import expect


def login(page, username, password, lang="en"):
    page.goto("/console/")
    if lang:
        page.select_option("#lang", lang)
    labels = {"en": ("Username", "Password", "Log in"), "zh": ("用户名", "密码", "登录")}[lang or "en"]
    form = page.locator("#login-form")
    form.get_by_label(labels[0], exact=True).fill(username)
    form.get_by_label(labels[1], exact=True).fill(password)
    form.get_by_role("button", name=labels[2], exact=True).click()


def logged_in(page, username, password, lang="en"):
    login(page, username, password, lang)
    expect(page.locator("#whoami")).to_contain_text(username)
    expect(page.locator("#chat-model option").first).to_be_attached()


def go(page, view):
    page.click(f'#nav a[data-view="{view}"]')
    expect(page.locator(f"#view-{view}")).to_be_visible()


def send_message(page, text):
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def last_reply(page):
    return page.locator("#chat-log article.msg.assistant").last


def wait_reply_done(page, timeout=15_000):
    reply = last_reply(page)
    expect(reply).not_to_have_attribute("aria-busy", "true", timeout=timeout)
    return reply


def unix_now():
    return int(time.time())
