"""A real OAuth2 authorization server for the tests, built with Authlib and served locally:
authorization code with PKCE (S256 required), refresh tokens (rotated), a user-info endpoint
and revocation. Switches make it refuse consent, fail its token endpoint, refuse refreshes,
or hand out tokens that expire at once."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

CLIENT_ID, CLIENT_SECRET = "jobsprint-test", "test-client-secret-" + "x" * 16


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uri: str

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uri

    def get_allowed_scope(self, scope):
        return scope or "profile"

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


@dataclass
class Token(TokenMixin):
    client_id: str
    user: str
    scope: str
    access_token: str
    refresh_token: str | None
    expires_in: int
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return self.user

    def get_client(self):
        return None


class OAuthProviderServer:
    """The server and its switches; ``url`` is where it listens."""

    def __init__(self, redirect_uri: str) -> None:
        self.client = Client(CLIENT_ID, CLIENT_SECRET, redirect_uri)
        self.codes: dict[str, Code] = {}
        self.tokens: list[Token] = []
        self.revoked: list[str] = []
        self.token_requests = 0
        self.refreshes = 0
        self.deny = False
        self.token_down = False
        self.refuse_refresh = False
        self.expires_in = 3600
        self.app = self._build()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()

    def _build(self) -> Flask:
        provider = self
        app = Flask("oauth-provider")
        app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True  # issue refresh tokens

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, req):
                data = req.payload.data
                provider.codes[code] = Code(
                    code, req.client.client_id, req.payload.redirect_uri, req.scope,
                    req.user, data.get("code_challenge"), data.get("code_challenge_method"))

            def query_authorization_code(self, code, client):
                found = provider.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code):
                provider.codes.pop(authorization_code.code, None)  # a code works once

            def authenticate_user(self, authorization_code):
                return authorization_code.user

        class RefreshGrant(grants.RefreshTokenGrant):
            INCLUDE_NEW_REFRESH_TOKEN = True
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def authenticate_refresh_token(self, refresh_token):
                if provider.refuse_refresh:
                    return None
                return next((t for t in provider.tokens if t.refresh_token == refresh_token
                             and not t.revoked), None)

            def authenticate_user(self, credential):
                return credential.user

            def revoke_old_credential(self, credential):
                credential.revoked = True
                provider.refreshes += 1

        def save_token(token, req):
            provider.tokens.append(Token(req.client.client_id, req.user, token.get("scope", ""),
                                         token["access_token"], token.get("refresh_token"),
                                         token["expires_in"]))

        server = AuthorizationServer(app, query_client=lambda cid: provider.client
                                     if cid == CLIENT_ID else None, save_token=save_token)
        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(RefreshGrant)
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 3600,
                                                 "refresh_token": 3600}

        @app.get("/authorize")
        def authorize():
            return server.create_authorization_response(grant_user=None if provider.deny
                                                        else "ann")

        @app.post("/token")
        def token():
            provider.token_requests += 1
            if provider.token_down:
                return jsonify(error="temporarily_unavailable"), 503
            response = server.create_token_response()
            if provider.expires_in != 3600 and response.status_code == 200:
                body = response.get_json()
                body["expires_in"] = provider.expires_in
                for stored in provider.tokens:
                    if stored.access_token == body["access_token"]:
                        stored.expires_in = provider.expires_in
                return jsonify(body)
            return response

        @app.get("/userinfo")
        def userinfo():
            auth = request.headers.get("Authorization", "")
            token = next((t for t in provider.tokens if f"Bearer {t.access_token}" == auth
                          and not t.revoked), None)
            if token is None:
                return jsonify(error="invalid_token"), 401
            return jsonify(login=token.user, sub="user-1")

        @app.post("/revoke")
        def revoke():
            value = request.form.get("token", "")
            for stored in provider.tokens:
                if value in (stored.access_token, stored.refresh_token):
                    stored.revoked = True
                    provider.revoked.append(value)
            return "", 200

        return app
