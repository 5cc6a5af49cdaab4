"""Prompt templates: save a new version, list the latest of each."""

from __future__ import annotations

from flask import g, jsonify

from app.services import prompt_templates
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation


@bp.get("/prompt-templates")
@operation("The latest version of each of your prompt templates", tag="ai",
           responses={200: c.PromptTemplateList})
def list_prompt_templates():
    return jsonify(items=[prompt_templates.as_api(t)
                          for t in prompt_templates.latest(g.user)])


@bp.post("/prompt-templates")
@operation("Save a prompt template (a new version when the name exists)", tag="ai",
           body=c.PromptTemplateIn, responses={201: c.PromptTemplateOut})
def save_prompt_template():
    return jsonify(prompt_templates.as_api(prompt_templates.save(g.user, json_object()))), 201
