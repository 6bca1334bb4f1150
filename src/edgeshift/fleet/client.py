"""The operators' client: one method per operator route of the control plane (docs/fleet.md),
over httpx. Every refusal is a FleetError carrying the server's one line and status."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from edgeshift.errors import FleetError
from edgeshift.fleet.schema import (
    ActionResult,
    ArtifactInfo,
    DeviceInfo,
    EnrolmentToken,
    EnrolmentTokenSpec,
    GroupInfo,
    GroupSpec,
    RolloutInfo,
    RolloutSpec,
)

_M = TypeVar("_M", bound=BaseModel)
_UPLOAD_CHUNK_BYTES = 1 << 20


class OperatorClient:
    """``OperatorClient("http://127.0.0.1:8600", token)``; use as a context manager or call
    ``close()``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if isinstance(verify, str):  # a CA bundle (PEM) to trust, e.g. a self-signed server's
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise FleetError(
                    f"cannot use the CA file {verify} ({exc}) — give a PEM file", 400
                ) from None
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise FleetError(
                f"cannot reach the control plane at {self.url} ({exc.__class__.__name__}: {exc})"
                " — start it with 'edgeshift fleet serve' or give --server",
                503,
            ) from None
        if response.status_code >= 400:
            raise FleetError(_error_line(response), response.status_code)
        return response

    def _get(self, path: str, model: type[_M], **kwargs: Any) -> _M:
        return _parse(model, self._request("GET", path, **kwargs).json())

    def _list(self, path: str, model: type[_M], **kwargs: Any) -> list[_M]:
        body = self._request("GET", path, **kwargs).json()
        return [_parse(model, item) for item in body]

    def _send(self, method: str, path: str, model: type[_M], body: Any = None) -> _M:
        if isinstance(body, BaseModel):
            body = body.model_dump(mode="json")
        return _parse(model, self._request(method, path, json=body).json())

    # --- routes ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/healthz").json())

    def root_json(self) -> bytes:
        """The trusted TUF root a device is provisioned with."""
        return self._request("GET", "/v1/root.json").content

    def create_enrolment_token(self, spec: EnrolmentTokenSpec) -> EnrolmentToken:
        return self._send("POST", "/v1/enrolment-tokens", EnrolmentToken, spec)

    def list_devices(
        self, group: str | None = None, selector: Mapping[str, str] | None = None
    ) -> list[DeviceInfo]:
        params: list[tuple[str, str]] = [("group", group)] if group else []
        params += [("label", f"{k}={v}") for k, v in (selector or {}).items()]
        return self._list("/v1/devices", DeviceInfo, params=params)

    def get_device(self, device_id: str) -> DeviceInfo:
        return self._get(f"/v1/devices/{_segment(device_id)}", DeviceInfo)

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> DeviceInfo:
        return self._send(
            "PUT", f"/v1/devices/{_segment(device_id)}/labels", DeviceInfo, dict(labels)
        )

    def revoke_device(self, device_id: str) -> DeviceInfo:
        return self._send("DELETE", f"/v1/devices/{_segment(device_id)}", DeviceInfo)

    def list_groups(self) -> list[GroupInfo]:
        return self._list("/v1/groups", GroupInfo)

    def put_group(self, spec: GroupSpec) -> GroupInfo:
        return self._send("PUT", f"/v1/groups/{_segment(spec.name)}", GroupInfo, spec)

    def publish_artifact(self, bundle: Path, name: str, version: int) -> ArtifactInfo:
        """Upload a bundle tar (``fleet.bundle.pack``), streamed from disk."""
        size = Path(bundle).stat().st_size
        with open(bundle, "rb") as stream:
            response = self._request(
                "POST",
                "/v1/artifacts",
                params={"name": name, "version": str(version)},
                content=_chunks(stream),
                headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
            )
        return _parse(ArtifactInfo, response.json())

    def list_artifacts(self) -> list[ArtifactInfo]:
        return self._list("/v1/artifacts", ArtifactInfo)

    def get_artifact(self, artifact_id: str) -> ArtifactInfo:
        return self._get(f"/v1/artifacts/{_segment(artifact_id)}", ArtifactInfo)

    def create_rollout(self, spec: RolloutSpec) -> RolloutInfo:
        return self._send("POST", "/v1/rollouts", RolloutInfo, spec)

    def list_rollouts(self, active_only: bool = False) -> list[RolloutInfo]:
        return self._list(
            "/v1/rollouts", RolloutInfo, params={"active": "1"} if active_only else {}
        )

    def get_rollout(self, rollout_id: str) -> RolloutInfo:
        return self._get(f"/v1/rollouts/{_segment(rollout_id)}", RolloutInfo)

    def rollout_action(self, rollout_id: str, action: str) -> ActionResult:
        """ACTION is pause, resume, cancel or rollback."""
        return self._send("POST", f"/v1/rollouts/{_segment(rollout_id)}/{action}", ActionResult)

    def pause(self, rollout_id: str) -> ActionResult:
        return self.rollout_action(rollout_id, "pause")

    def resume(self, rollout_id: str) -> ActionResult:
        return self.rollout_action(rollout_id, "resume")

    def cancel(self, rollout_id: str) -> ActionResult:
        return self.rollout_action(rollout_id, "cancel")

    def rollback(self, rollout_id: str) -> ActionResult:
        return self.rollout_action(rollout_id, "rollback")

    def summary(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v1/summary").json())


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(_UPLOAD_CHUNK_BYTES):
        yield chunk


def _segment(value: str) -> str:
    # Ids are names (no '/'), but a typo must not turn into another route.
    return urllib.parse.quote(value, safe="")


def _error_line(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"the control plane answered {response.status_code} {response.reason_phrase}"


def _parse(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FleetError(
            f"the control plane's answer is not a {model.__name__} — is the server an older"
            f" edgeshift? ({exc.error_count()} errors)",
            502,
        ) from None
