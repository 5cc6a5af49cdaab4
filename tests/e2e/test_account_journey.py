"""A person creates an account, signs out, signs back in and sees their empty workflow list."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import screenshot


def test_register_logout_login_empty_list(page):
    base = page.base_url
    page.goto(base + "/")
    expect(page).to_have_url(base + "/login")
    page.get_by_role("link", name="Create an account").click()

    page.get_by_label("Email").fill("  Journey@Example.com ")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Repeat password").fill("short")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert").first).to_contain_text("between 8 and 1024 characters")
    screenshot(page, "01-register-error")

    page.get_by_label("Password", exact=True).fill("a long enough password")
    page.get_by_label("Repeat password").fill("a long enough password")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(base + "/workflows")
    expect(page.get_by_role("heading", name="No workflows yet")).to_be_visible()
    expect(page.get_by_text("journey@example.com")).to_be_visible()
    screenshot(page, "02-empty-workflows")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base + "/login")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto(base + "/workflows")
    expect(page).to_have_url(base + "/login?next=%2Fworkflows")

    page.get_by_label("Email").fill("journey@example.com")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    screenshot(page, "03-login-error")

    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + "/workflows")
    expect(page.get_by_role("heading", name="No workflows yet")).to_be_visible()


def test_phone_screen_shows_the_login_form(browser, live_server):
    context = browser.new_context(viewport={"width": 375, "height": 700})
    tab = context.new_page()
    tab.goto(live_server + "/login")
    form_box = tab.get_by_role("button", name="Sign in").bounding_box()
    assert form_box["x"] + form_box["width"] <= 375
    screenshot(tab, "04-login-phone")
    context.close()
