"""Prompt templates: saved per user by name, each save a new version (the old ones stay, so a
node can pin ``name@version``); ai.chat reads them through the cache ``template:…``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.db import db
from app.errors import Problem, ValidationFailed
from app.models import PromptTemplate, User, isoformat
from app.services import audit, cache


def save(user: User, data: Any) -> PromptTemplate:
    if not isinstance(data, dict):
        raise ValidationFailed("the template must be a JSON object")
    problems = []
    name, prompt, system = data.get("name"), data.get("prompt"), data.get("system")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "@" in name:
        problems.append(Problem("name", "must be 1 to 200 characters, without '@'"))
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(Problem("prompt", "is required"))
    if system is not None and not isinstance(system, str):
        problems.append(Problem("system", "must be text"))
    if problems:
        raise ValidationFailed("the template is invalid", problems)
    name = name.strip()
    latest = db.session.scalar(select(func.max(PromptTemplate.version)).where(
        PromptTemplate.user_id == user.id, PromptTemplate.name == name)) or 0
    template = PromptTemplate(user_id=user.id, name=name, version=latest + 1,
                              system=system or None, prompt=prompt)
    db.session.add(template)
    audit.record("prompt_template.save", user_id=user.id, target_type="prompt_template",
                 name=name, version=latest + 1)
    db.session.commit()
    cache.forget(f"template:{user.id}:{name}")  # the unpinned name now means the new version
    return template


def latest(user: User) -> list[PromptTemplate]:
    newest = (select(PromptTemplate.name, func.max(PromptTemplate.version).label("version"))
              .where(PromptTemplate.user_id == user.id, PromptTemplate.deleted_at.is_(None))
              .group_by(PromptTemplate.name).subquery())
    return list(db.session.scalars(
        select(PromptTemplate).join(newest, (PromptTemplate.name == newest.c.name)
                                    & (PromptTemplate.version == newest.c.version))
        .where(PromptTemplate.user_id == user.id).order_by(PromptTemplate.name)))


def as_api(template: PromptTemplate) -> dict:
    return {"name": template.name, "version": template.version, "system": template.system,
            "prompt": template.prompt, "created_at": isoformat(template.created_at)}
