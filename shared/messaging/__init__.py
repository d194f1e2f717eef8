"""Every broker concern in one place; services never import ``aio_pika`` directly."""

from shared.messaging.admin import Delivery
from shared.messaging.broker import Broker, Reject
from shared.messaging.topology import QueueSpec

__all__ = ["Broker", "Delivery", "QueueSpec", "Reject"]
