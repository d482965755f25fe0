"""Publishers turn a finished ``Product`` into a WMS/WCS ``Layer``, one small class per engine."""
from __future__ import annotations

from abc import ABC, abstractmethod

from aquamask.processes.types import Layer, Product


class Publisher(ABC):
    """Interface of every publisher, chosen by dotted path in config."""

    name: str

    @abstractmethod
    def publish(self, product: Product) -> Layer:
        """Make ``product`` a layer; publishing the same product again must not duplicate it."""

    @abstractmethod
    def unpublish(self, product_id: str) -> None:
        """Remove the layer of ``product_id``; a no-op when it is not published."""
