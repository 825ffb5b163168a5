"""A bounded cache: at most ``size`` entries; when full, the least recently used one goes (one
entry at a time, never the whole cache), so a working set a little larger than the cache loses a
little, not everything."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()


class BoundedCache(Generic[K, V]):
    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a cache size cannot be negative")
        self.size = size
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        data = self._data
        value = data.pop(key, _MISSING)  # re-inserted below: the most recently used is last
        if value is _MISSING:
            return None
        data[key] = value  # type: ignore[assignment]
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> None:
        if not self.size:
            return
        data = self._data
        data.pop(key, None)
        data[key] = value
        if len(data) > self.size:
            del data[next(iter(data))]

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
