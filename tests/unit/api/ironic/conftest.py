"""Helpers for the Ironic-compatible API's tests: a client speaking a microversion, and its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

LATEST = {"X-OpenStack-Ironic-API-Version": "1.80"}
IMAGE = {"image_source": "http://images.example.com/disk.raw", "image_checksum": "a" * 64}


def fault(response: Any) -> dict[str, Any]:
    """The Ironic error envelope's inner document (what the clients parse)."""
    body = response.get_json()
    assert set(body) == {"error_message"}, body
    inner = json.loads(body["error_message"])
    assert set(inner) == {"faultcode", "faultstring", "debuginfo"}
    return inner


class Ironic:
    """A test client of ``/baremetal/v1`` that sends one microversion (1.80 unless told)."""

    def __init__(self, client: Any, version: str = "1.80") -> None:
        self.client = client
        self.version = version

    def _headers(self, version: str | None) -> dict[str, str]:
        return {"X-OpenStack-Ironic-API-Version": version or self.version}

    def get(self, path: str, version: str | None = None, **kwargs: Any) -> Any:
        return self.client.get("/baremetal/v1" + path, headers=self._headers(version), **kwargs)

    def post(self, path: str, body: Any, version: str | None = None) -> Any:
        return self.client.post("/baremetal/v1" + path, json=body, headers=self._headers(version))

    def put(self, path: str, body: Any = None, version: str | None = None) -> Any:
        return self.client.put("/baremetal/v1" + path, json=body, headers=self._headers(version))

    def patch(self, path: str, body: Any, version: str | None = None) -> Any:
        return self.client.patch("/baremetal/v1" + path, json=body, headers=self._headers(version))

    def delete(self, path: str, version: str | None = None) -> Any:
        return self.client.delete("/baremetal/v1" + path, headers=self._headers(version))

    def create(self, **fields: Any) -> dict[str, Any]:
        """Create a node (``fake-hardware`` unless told); returns its body."""
        fields.setdefault("driver", "fake-hardware")
        response = self.post("/nodes", fields)
        assert response.status_code == 201, response.get_json()
        return dict(response.get_json())


@pytest.fixture
def ironic(client: Any) -> Ironic:
    return Ironic(client)
