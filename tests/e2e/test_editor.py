"""A person builds a workflow in the editor only by clicking and typing: manual trigger → set →
if → set, connected by clicking ports; moves a node by dragging; sees an invalid expression
flagged at its field; saves with Ctrl+S; deletes with the Delete key; undoes."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.test_workflow_list import register


def node(page, node_id):
    return page.locator(f'g.node[data-node="{node_id}"]')


def test_build_a_workflow_by_clicking(page):
    register(page)
    page.get_by_label("New workflow name").fill("Orders by hand")
    page.get_by_role("button", name="Create workflow").click()
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    expect(node(page, "start")).to_be_visible()
    palette = page.get_by_role("navigation", name="Add a node")

    # The trigger is there; add set, if and another set (each lands after the last one)
    node(page, "start").click()
    expect(page.get_by_role("heading", name="Run by hand start")).to_be_visible()
    palette.get_by_role("button", name="Set fields").click()
    expect(node(page, "set")).to_be_visible()
    page.get_by_label("Fields: new name").fill("total")
    page.get_by_label("Fields: new value").fill("{{ input.amount * 2 }}")
    page.get_by_label("Fields: new value").press("Enter")  # applies the form
    expect(page.get_by_label("Fields: name 1")).to_have_value("total")

    palette.get_by_role("button", name="If", exact=True).click()
    expect(node(page, "if")).to_be_visible()
    page.get_by_label("Condition").fill("{{ input.total > 100")  # unclosed
    page.get_by_label("Condition").press("Enter")
    field = page.locator('[data-param="condition"]')
    expect(field.get_by_role("alert")).to_be_visible()
    expect(node(page, "if")).to_have_class(re.compile(r"\binvalid\b"))
    expect(node(page, "if")).to_have_attribute("aria-label", "Node if, If, has problems")
    page.get_by_label("Condition").fill("{{ input.total > 100 }}")
    page.get_by_label("Condition").press("Enter")
    expect(field.get_by_role("alert")).to_have_count(0)

    palette.get_by_role("button", name="Set fields").click()
    expect(node(page, "set_2")).to_be_visible()
    # set_2 was linked from the if's first output; link the 'false' output too, by ports
    node(page, "if").locator('.port.out[data-output="false"]').dispatch_event("pointerdown")
    node(page, "set_2").click()
    expect(page.locator('g.edge[aria-label="Connection from if (false) to set_2"]')).to_be_visible()
    expect(page.locator("g.edge")).to_have_count(4)

    # drag a node
    node(page, "set_2").scroll_into_view_if_needed()
    box = node(page, "set_2").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 30)
    page.mouse.down()
    page.mouse.move(box["x"] + 60, box["y"] + 160, steps=5)
    page.mouse.up()
    # down by 130 screen pixels, which is more in canvas units when the graph is scaled to fit
    expect(node(page, "set_2")).to_have_attribute(
        "transform", re.compile(r"translate\(690,(1[3-9]\d|2[0-2]\d)\)"))

    page.keyboard.press("ArrowRight")  # and with the keyboard: 20 to the right
    expect(node(page, "set_2")).to_have_attribute("transform", re.compile(r"translate\(710,"))
    page.keyboard.press("Control+s")
    expect(page.locator("#editor").get_by_role("status")).to_have_text("Saved version 2.")
    screenshot(page, "30-editor-built")

    # delete with the keyboard, then undo
    node(page, "set_2").click()
    expect(page.get_by_role("heading", name="Set fields set_2")).to_be_visible()
    page.keyboard.press("Delete")
    expect(node(page, "set_2")).to_have_count(0)
    page.get_by_role("button", name="Undo").click()
    expect(node(page, "set_2")).to_be_visible()
    expect(page.locator("g.edge")).to_have_count(4)

    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("region", name="History")).to_contain_text("Version 2")
    screenshot(page, "31-editor-history")

    # a node name with markup is text on the canvas and in the form (an alert() would open a
    # dialog, which nothing here accepts: the test would hang and fail)
    node(page, "set").click()
    # the panel is swapped in by htmx: type only once it is the set node's form
    expect(page.get_by_role("heading", name="Set fields set", exact=True)).to_be_visible()
    page.get_by_label("Name", exact=True).fill("<img src=x onerror=alert(1)>")
    page.get_by_label("Name", exact=True).press("Enter")
    expect(node(page, "set").locator(".node-title")).to_have_text("<img src=x onerror…")
    expect(page.get_by_label("Name", exact=True)).to_have_value("<img src=x onerror=alert(1)>")
    expect(page.locator("#editor img")).to_have_count(0)

    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_role("button", name="Save", exact=True)).to_be_visible()
    screenshot(page, "34-editor-phone")


def test_run_from_the_editor_and_watch_each_node_turn_green(page):
    register(page)
    page.get_by_label("New workflow name").fill("Live run")
    page.get_by_role("button", name="Create workflow").click()
    palette = page.get_by_role("navigation", name="Add a node")
    node(page, "start").click()
    palette.get_by_role("button", name="Set fields").click()
    page.get_by_label("Fields: new name").fill("total")
    page.get_by_label("Fields: new value").fill("{{ input.amount * 2 }}")
    page.get_by_label("Fields: new value").press("Enter")
    expect(page.get_by_label("Fields: name 1")).to_have_value("total")
    palette.get_by_role("button", name="No operation").click()
    expect(node(page, "noop")).to_be_visible()

    page.get_by_label("Run input (JSON)").fill('{"amount": 60}')
    page.get_by_role("button", name="Save and run").click()
    for node_id in ("start", "set", "noop"):
        expect(node(page, node_id)).to_have_class(re.compile(r"\brun-succeeded\b"), timeout=15000)
        expect(node(page, node_id).locator(".run-icon")).to_have_text("✓")
    expect(page.locator(".run-strip .status").first).to_have_text("succeeded")
    screenshot(page, "32-editor-run-succeeded")

    page.get_by_role("button", name="Input and output of set").click()
    detail = page.get_by_role("region", name="Node set")
    expect(detail).to_contain_text('"total": 120')
    expect(detail).to_contain_text('"amount": 60')  # kept from the input (keep: all)
    screenshot(page, "33-editor-node-output")
