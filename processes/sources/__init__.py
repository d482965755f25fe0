"""Imagery sources: each turns a request (an href today; a place and a date with the sources
issue) into a ``Scene``. Chosen by name in config, one small class per kind."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from aquamask.processes.types import Scene


class Source(ABC):
    name: str

    @abstractmethod
    def read(self, request: dict[str, Any]) -> Scene:
        """Open the imagery ``request`` names as a Scene of the detection bands."""
