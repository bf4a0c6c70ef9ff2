"""The asyncio Weir clients: `Producer`, `Consumer`, `Admin`."""

from weir.aio.admin import Admin
from weir.aio.batch import RecordFuture
from weir.aio.consumer import Consumer
from weir.aio.producer import Producer

__all__ = ["Admin", "Consumer", "Producer", "RecordFuture"]
