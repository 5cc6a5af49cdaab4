"""The queue adapter: ``open_queue(QUEUE_URL)`` picks the backend."""

from __future__ import annotations

from app.queue.base import Handler, RunQueue


def open_queue(url: str | None, **options) -> RunQueue:
    """``None`` → inline thread pool; ``redis://`` → RQ; ``amqp://`` → RabbitMQ."""
    if not url:
        from app.queue.inline import InlineQueue

        return InlineQueue(**options)
    if url.startswith(("redis://", "rediss://")):
        from app.queue.rq import RQQueue

        return RQQueue(url, **options)
    if url.startswith(("amqp://", "amqps://")):
        from app.queue.rabbitmq import RabbitQueue

        return RabbitQueue(url, **options)
    raise ValueError(f"QUEUE_URL: unsupported scheme in {url.split('://')[0]!r}")


__all__ = ["Handler", "RunQueue", "open_queue"]
