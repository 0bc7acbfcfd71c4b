"""A page's own address opens that page as part of the app, even as a server's first visit.

Streamlit turns its old pages/-folder handling off only once a session has called
st.navigation (app.py does); before that, a first visit straight to /Paper_Figure_1 (a link
a teacher shared, a reload, a bookmark) ran the page's file alone: no wide layout and a
sidebar listing "app" and file names (ui/navigation.py). This module's server is its own,
so its first test is that server's first visit.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytest.register_assert_rewrite("tests.browser_support")

from tests.browser_support import LOAD_TIMEOUT_MS, app, screenshot, wait_idle
from ui.navigation import PAGES

pytest_plugins = ("tests.browser_support",)
pytestmark = pytest.mark.browser

TITLES = [title for _, title, _ in PAGES]
# Streamlit's address for a page file: its name without the number prefix and ".py".
SUB_PAGES = [(re.sub(r"^\d+_", "", Path(target).stem), title) for target, title, _ in PAGES if isinstance(target, str)]
CENTERED_MAX_PX = 736  # Streamlit's main column without layout="wide"; the tests' viewport is 1400 px


def open_address(page, url: str, title: str) -> None:
    page.goto(url)
    expect(page.get_by_role("heading", level=1)).to_have_text(title, timeout=LOAD_TIMEOUT_MS)
    wait_idle(page, LOAD_TIMEOUT_MS)


def sidebar_titles(page) -> list[str]:
    links = page.get_by_test_id("stSidebarNav").get_by_test_id("stSidebarNavLink")
    return [text.splitlines()[-1].strip() for text in links.all_inner_texts()]


def test_first_visit_to_a_fresh_server_straight_to_a_page_gets_the_apps_layout_and_sidebar(app_server, page):
    address, title = SUB_PAGES[0]
    open_address(page, f"{app_server.url}/{address}", title)
    assert sidebar_titles(page) == TITLES
    assert urlsplit(page.url).path == f"/{address}"
    main = page.get_by_test_id("stMainBlockContainer").bounding_box()
    screenshot(page, "deep-link-first-visit")
    assert main["width"] > CENTERED_MAX_PX + 100, main
    expect(app(page).get_by_test_id("stException")).to_have_count(0)


@pytest.mark.parametrize("address,title", SUB_PAGES, ids=[a for a, _ in SUB_PAGES])
def test_every_page_address_opens_that_page_in_the_app(app_server, page, address, title):
    open_address(page, f"{app_server.url}/{address}", title)
    assert sidebar_titles(page) == TITLES
    expect(app(page).get_by_test_id("stException")).to_have_count(0)
