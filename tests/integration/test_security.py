"""Headers on every response; error pages that reveal nothing."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/login", "/nope", "/api/v1/nope", "/static/css/app.css"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_unknown_page_is_a_plain_404(client):
    response = client.get("/no/such/page")
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    assert "There is nothing here." in html
    assert "Traceback" not in html and "werkzeug" not in html.lower()


def test_wrong_method_is_405_page(client):
    assert client.delete("/login").status_code == 405


def test_unexpected_errors_show_no_stack_path_or_version(app, client, caplog):
    @app.get("/boom-for-test")
    def boom():
        raise RuntimeError("secret detail /root/app/thing.py")

    response = client.get("/boom-for-test")
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "secret detail" not in body
    assert "Traceback" not in body and "/root" not in body and "Python" not in body
    assert "Something went wrong" in body
    assert "RuntimeError" in caplog.text  # it is logged for the operator


def test_api_500_is_json_without_detail(app, client):
    @app.get("/api/v1/boom-for-test")
    def api_boom():
        raise ValueError("internal detail")

    response = client.get("/api/v1/boom-for-test")
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal_error", "details": [],
                                             "message": "Something went wrong on our side. "
                                                        "It has been logged."}}


def test_html_is_escaped(client, auth):
    response = auth.register(email="<script>alert(1)</script>@example.com")
    html = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
