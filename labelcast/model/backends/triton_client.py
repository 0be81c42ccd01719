"""The Triton client: ``uint8`` pixels to a Triton server, logits back, faults waited out.

How it waits and retries is the Triton backend's contract (``triton.py``); what the served
model must look like is ``triton_served.py``. ``tritonclient`` is imported only inside the
methods that talk to the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from labelcast.errors import BatchError, ModelError
from labelcast.model.backends.triton_served import (
    INFO_OUTPUT,
    INFO_PARAMETER,
    INPUT_NAME,
    OUTPUT_NAME,
    Expected,
    ServedModel,
)
from labelcast.model.config import TritonConfig
from labelcast.util.backoff import Backoff

log = logging.getLogger(__name__)

_INSTALL_HINT = "install it with: pip install 'labelcast[triton]'"
# Longest server error message quoted in a readiness reason or log line.
_REASON_CHARS = 300


class _Unreachable(Exception):
    """The server cannot be reached, or its model is not ready: wait, don't count."""


class _Failed(Exception):
    """A reachable server failed a request (an error answer, or none within the timeout)."""


class _Mismatch(Exception):
    """The server's model is not the one this gateway's config describes: wait."""


class TritonModel:
    """A classifier served by Triton: ``uint8`` pixels in, logits out, waiting out faults.

    Only the thread that calls it (the pipeline's classifier thread) talks to the
    server; ``status`` and ``activity`` may be read from any thread.
    """

    def __init__(
        self,
        config: TritonConfig,
        expected: Expected,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _require()
        self.config = config
        self.expected = expected
        self.protocol: Literal["grpc", "http"] = "grpc" if config.url.startswith("grpc") else "http"
        self.address = config.url.split("://", 1)[1]
        self.served: ServedModel | None = None
        self.max_batch_size = 0
        self._clock = clock
        self._local = threading.local()
        self._connected = False
        self._status: str | None = "not connected yet"
        self._activity = clock()
        self._logged: str | None = None  # the wait reason last logged
        self._warned_unidentified = False
        self._ever_connected = False
        self._backoff = Backoff(config.reconnect)

    @property
    def status(self) -> str | None:
        """None while the server answers; else why the gateway is waiting for it."""
        return self._status

    @property
    def activity(self) -> float:
        """``time.monotonic()`` of the latest request, probe or backoff step."""
        return self._activity

    def probe(self) -> ServedModel | None:
        """Connect once (bounded by ``timeout_s``); return what the server serves, or None.

        On failure ``status`` says why.
        """
        try:
            self._connect()
        except (_Unreachable, _Mismatch, _Failed) as exc:
            self._disconnect()
            self._wait_status(exc, 0)
            return None
        self._set_status(None)
        return self.served

    def __call__(self, pixels: torch.Tensor, stop: threading.Event | None = None) -> torch.Tensor:
        """Return (N, num_labels) fp32 logits for (N, 3, H, W) ``uint8`` pixels.

        Waits (and retries) through faults as the module docstring says; raises
        BatchError when the batch is dropped or ``stop`` is set while waiting.
        """
        array: npt.NDArray[np.uint8] = pixels.detach().to("cpu").contiguous().numpy()
        failures = 0
        while True:
            if stop is not None and stop.is_set():
                raise BatchError(
                    f"stopped while waiting for the Triton server {self.config.url}; "
                    f"a batch of {len(array)} frame(s) was not classified"
                )
            try:
                if not self._connected:
                    self._connect()
                logits = self._infer(array)
            except (_Unreachable, _Mismatch) as exc:
                self._disconnect()
                self._wait_status(exc, len(array))
            except _Failed as exc:
                failures += 1
                self._connected = False  # probe health and model again before resending
                self._status = f"triton {self.config.url}: {exc}"
                if failures > self.config.retries:
                    raise BatchError(
                        f"the Triton server {self.config.url} failed a batch of "
                        f"{len(array)} frame(s) {failures} times (last: {exc}); its frames "
                        f"count as dropped (model.triton.retries: {self.config.retries})"
                    ) from None
                log.warning(
                    "triton %s: a batch of %d frame(s) failed (%s), attempt %d of %d; "
                    "sending it again",
                    self.config.url,
                    len(array),
                    exc,
                    failures,
                    self.config.retries + 1,
                )
            else:
                self._backoff.reset()
                self._set_status(None)
                return torch.from_numpy(logits)
            self._pause(self._backoff.next_delay(), stop)

    # -- connection ------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            timeout = self.config.timeout_s
            if self.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(url=self.address)
            else:
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    url=self.address, connection_timeout=timeout, network_timeout=timeout
                )
            self._local.client = client
        return client

    def _disconnect(self) -> None:
        """Forget the connection: the next attempt opens a new one (no gRPC reconnect wait)."""
        self._connected = False
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken client can fail in many ways; it is gone
                log.debug("closing the Triton client failed", exc_info=True)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a client method with the timeout; map its errors to _Unreachable or _Failed."""
        client = self._client()
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.config.timeout_s
        self._activity = self._clock()
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as exc:  # tritonclient, gRPC, gevent and sockets raise many kinds
            mapped = _error(exc, self.config.timeout_s)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            self._activity = self._clock()

    def _connect(self) -> None:
        """Check the server, its model's signature and identity; raise why it can't be used."""
        model = self.config.model
        try:
            if not self._call("is_server_live"):
                raise _Unreachable("the server is not live")
            if not self._call("is_model_ready", model):
                raise _Unreachable(
                    f"the server has no ready model {model!r} (still loading, or it serves "
                    "no model of that name)"
                )
            if self.protocol == "grpc":
                config = self._call("get_model_config", model, as_json=True)["config"]
            else:
                config = self._call("get_model_config", model)
        except _Failed as exc:
            # A health probe that fails or times out: the server is not usable, wait.
            raise _Unreachable(str(exc)) from None
        self.max_batch_size = _check_signature(config, self.expected, model)
        self.served = self._identify(config)
        self._connected = True
        self._log_connected()

    def _identify(self, config: dict[str, Any]) -> ServedModel | None:
        """Read what the model serves and compare it with what this gateway expects."""
        text: str | bytes | None = None
        parameter = (config.get("parameters") or {}).get(INFO_PARAMETER)
        if isinstance(parameter, dict):
            text = parameter.get("string_value")
        elif any(out.get("name") == INFO_OUTPUT for out in config.get("output", [])):
            height, width = self.expected.input_size
            zeros = np.zeros((1, 3, height, width), dtype=np.uint8)
            try:
                result = self._request(zeros, [OUTPUT_NAME, INFO_OUTPUT])
            except _Failed as exc:  # counted like a failed batch: the model itself failed
                raise _Failed(f"asking the model what it serves: {exc}") from None
            text = bytes(np.asarray(result.as_numpy(INFO_OUTPUT)).reshape(-1)[0])
        if text is None:
            if not self._warned_unidentified:
                self._warned_unidentified = True
                log.warning(
                    "triton %s: model %r does not say which checkpoint it serves (no %r "
                    "parameter or output); cannot check it is %s",
                    self.config.url,
                    self.config.model,
                    INFO_PARAMETER,
                    self.expected.model_id,
                )
            return None
        try:
            served = ServedModel.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise _Mismatch(
                f"model {self.config.model!r}: unreadable description ({exc})"
            ) from None
        expected = self.expected
        if served.fingerprint != expected.fingerprint:
            raise _Mismatch(
                f"model {self.config.model!r} serves {served.id} (revision "
                f"{served.revision or 'local'}) with other labels or preprocessing than "
                f"{expected.model_id} here (config fingerprint {served.fingerprint}, "
                f"expected {expected.fingerprint})"
            )
        if expected.precision is not None and served.precision != expected.precision:
            raise _Mismatch(
                f"model {self.config.model!r} runs in {served.precision}, but model.precision "
                f"is {expected.precision}"
            )
        return served

    def _log_connected(self) -> None:
        """Log the first connection, and each one that ends a logged wait."""
        if self._ever_connected and self._logged is None:
            return  # a reconnection after a failed attempt (already logged)
        again = self._ever_connected
        self._ever_connected = True
        served = self.served
        what = (
            f"{served.id}, {served.precision} on {served.device} ({served.backend})"
            if served is not None
            else "unidentified model"
        )
        log.info(
            "triton %s: connected to model %r (%s, max_batch_size %d)%s",
            self.config.url,
            self.config.model,
            what,
            self.max_batch_size,
            " again" if again else "",
        )
        self._logged = None

    # -- inference -------------------------------------------------------------------------

    def _infer(self, array: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Send the batch, split to fit the server's max_batch_size; return its logits."""
        size = self.max_batch_size or len(array)
        parts = []
        for start in range(0, len(array), size):
            result = self._request(array[start : start + size], [OUTPUT_NAME])
            logits = np.array(result.as_numpy(OUTPUT_NAME), dtype=np.float32)
            if logits.shape != (min(size, len(array) - start), self.expected.num_labels):
                raise _Failed(f"the server answered logits of shape {logits.shape}")
            parts.append(logits)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _request(self, array: npt.NDArray[np.uint8], outputs: list[str]) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        infer_input = module.InferInput(INPUT_NAME, list(array.shape), "UINT8")
        infer_input.set_data_from_numpy(array)
        requested = [module.InferRequestedOutput(name) for name in outputs]
        return self._call("infer", self.config.model, [infer_input], outputs=requested)

    # -- waiting ---------------------------------------------------------------------------

    def _pause(self, seconds: float, stop: threading.Event | None) -> None:
        """Wait ``seconds`` (at once if ``stop`` is set), showing activity every second."""
        deadline = self._clock() + seconds
        while True:
            self._activity = self._clock()
            remaining = deadline - self._activity
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return
            if stop is not None:
                stop.wait(min(remaining, 1.0))
            else:
                time.sleep(min(remaining, 1.0))

    def _set_status(self, reason: str | None) -> None:
        """Record why the server can't be used now (None: it can)."""
        self._status = None if reason is None else f"triton {self.config.url}: {reason}"

    def _wait_status(self, exc: Exception, frames: int) -> None:
        """Record and log (once per new reason) why the gateway waits for the server."""
        reason = str(exc)
        self._set_status(reason)
        if reason == self._logged:
            return
        self._logged = reason
        waiting = f"the batch in hand ({frames} frame(s)) waits" if frames else "batches wait"
        if isinstance(exc, _Mismatch):
            log.error(
                "triton %s: %s; %s until the server serves this checkpoint",
                self.config.url,
                reason,
                waiting,
                extra={"always": True},  # a change of state, logged once
            )
        else:
            log.warning(
                "triton %s: %s; %s, retrying with backoff",
                self.config.url,
                reason,
                waiting,
                extra={"always": True},
            )


def _check_signature(config: dict[str, Any], expected: Expected, model: str) -> int:
    """Check the served model's input and output; return its max_batch_size."""
    height, width = expected.input_size
    max_batch_size = int(config.get("max_batch_size", 0) or 0)
    if max_batch_size < 1:
        raise _Mismatch(f"model {model!r} has no batch axis (max_batch_size 0)")
    inputs = {item.get("name"): item for item in config.get("input", [])}
    outputs = {item.get("name"): item for item in config.get("output", [])}
    pixels = inputs.get(INPUT_NAME)
    want_in = [3, height, width]
    if (
        pixels is None
        or pixels.get("data_type") != "TYPE_UINT8"
        or [int(d) for d in pixels.get("dims", [])] != want_in
    ):
        raise _Mismatch(
            f"model {model!r} does not take {INPUT_NAME!r} UINT8 {want_in} (what this "
            f"checkpoint's preprocessing makes); it takes {_describe(inputs)}"
        )
    logits = outputs.get(OUTPUT_NAME)
    if (
        logits is None
        or logits.get("data_type") != "TYPE_FP32"
        or [int(d) for d in logits.get("dims", [])] != [expected.num_labels]
    ):
        raise _Mismatch(
            f"model {model!r} does not return {OUTPUT_NAME!r} FP32 [{expected.num_labels}] "
            f"(this checkpoint's labels); it returns {_describe(outputs)}"
        )
    return max_batch_size


def _describe(tensors: dict[Any, dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"{name!r} {str(item.get('data_type', '?')).removeprefix('TYPE_')} "
            f"{[int(d) for d in item.get('dims', [])]}"
            for name, item in tensors.items()
        )
        or "nothing"
    )


def _error(exc: BaseException, timeout_s: float) -> Exception | None:
    """Map a client error to _Unreachable (wait, don't count) or _Failed (count).

    None for anything else (a bug, not a fault of the server): it is raised as it is.
    """
    import http.client

    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = " ".join(str(exc.message() or exc).split())[:_REASON_CHARS]
        if status.endswith("UNAVAILABLE"):
            return _Unreachable(f"unreachable ({message})")
        if status.endswith("DEADLINE_EXCEEDED"):
            return _Failed(f"no answer within timeout_s ({timeout_s:g} s)")
        return _Failed(f"error {status.removeprefix('StatusCode.')}: {message}")
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        return _Failed(f"no answer within timeout_s ({timeout_s:g} s)")
    if isinstance(exc, OSError):
        return _Unreachable(f"unreachable ({exc.strerror or exc})")
    if isinstance(exc, http.client.HTTPException):
        return _Unreachable(f"unreachable ({type(exc).__name__}: {exc})")
    return None


def _require() -> None:
    import importlib.util

    if importlib.util.find_spec("tritonclient") is None:
        raise ModelError(
            f"model.backend triton needs tritonclient, which is not installed; {_INSTALL_HINT}"
        )
