"""The model host: loads one model (in the background at start-up), keeps it, and serializes every
use of it. Tool calls arrive concurrently on worker threads; the model is not thread-safe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.loading import LoadedModel, ModelSpec, load_model, resolve_spec
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.progress import HEARTBEAT_INTERVAL_S, Heartbeat, ProgressReporter, no_progress
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.cost import measured_throughput

log = logging.getLogger(__name__)
_WAIT_SLICE_S = 0.5
# One load at a time in the whole process, not per host: loaders patch global state while they build a model
# (accelerate's init_empty_weights patches nn.Module.register_parameter), and two overlapping loads on threads
# can leave it patched for good, so that every later model is built on the meta device.
_PROCESS_LOAD_LOCK = threading.Lock()


class LoadCancelled(BaseException):
    """The request that started a load was cancelled: the load stops at its next stage."""


class _LoadJob:
    """One load running on its own thread: its latest progress, its outcome, and whether it was abandoned."""

    def __init__(self, name: str) -> None:
        self.status: tuple[float, float | None, str | None] = (0, None, f"loading {name}")
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.result: LoadedModel | None = None
        self.error: BaseException | None = None

    def report(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self.cancelled.is_set():
            raise LoadCancelled("the load was cancelled")
        self.status = (done, total, message)


def count_hooks(bridge: Any) -> int:
    """Hook functions currently attached to the model's hook points (aliases counted once)."""
    points = {id(point): point for point in bridge.hook_dict.values()}.values()
    return sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in points)


@contextmanager
def beating(
    model: LoadedModel, report: ProgressReporter, interval_s: float = HEARTBEAT_INTERVAL_S
) -> Iterator[Heartbeat]:
    """`report` as a Heartbeat that beats at the start of every transformer block while the block is open."""
    heartbeat = Heartbeat(report, interval_s)
    blocks = list(model.bridge.blocks)
    places = [f"layer {layer} of {len(blocks)}" for layer in range(len(blocks))]
    handles = [
        block.register_forward_pre_hook(lambda *_, at=place: heartbeat.beat(at))
        for block, place in zip(blocks, places, strict=True)
    ]
    try:
        yield heartbeat
    finally:
        for handle in handles:
            handle.remove()


class ModelHost:
    """Holds the one loaded model. `use()` waits for it and holds the lock while a tool runs."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        trust_remote_code: bool = False,
        device_map: str | None = None,
        n_devices: int | None = None,
        load_policy: LoadPolicy | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.load_policy = load_policy or LoadPolicy()
        self.trust_remote_code = trust_remote_code
        self.device_map = device_map
        self.n_devices = n_devices
        self._model_lock = threading.Lock()  # held while the model runs
        self._load_lock = _PROCESS_LOAD_LOCK
        self._state_changed = threading.Condition()
        self._model: LoadedModel | None = None
        self._baseline_hooks = 0
        self._loading: str | None = None
        self._load_error: str | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel | None:
        return self._model

    @property
    def loading(self) -> str | None:
        return self._loading

    @property
    def load_error(self) -> str | None:
        return self._load_error

    # ---- loading -----------------------------------------------------------------------------
    def load(
        self,
        spec_text: str,
        device: str | None = None,
        dtype: str | None = None,
        progress: ProgressReporter = no_progress,
        *,
        confine: bool = False,
    ) -> LoadedModel:
        """Load a model and swap it in; on failure the previous model stays loaded and usable.

        The load runs on its own thread: until the swap, every other call keeps being served by the current
        model. This call waits for it, forwarding its progress; when `progress` raises (the request was
        cancelled) the load is abandoned: it stops at its next stage and is never swapped in. `confine`
        applies `load_policy` (a client's request, not the operator's --model)."""
        spec = self.load_policy.resolve(spec_text) if confine else resolve_spec(spec_text)
        job = _LoadJob(spec.name)
        threading.Thread(
            target=self._run_job, args=(job, spec, device, dtype), name="lens-mcp-model-load", daemon=True
        ).start()
        try:
            while not job.finished.wait(_WAIT_SLICE_S):
                progress(*job.status)
            if job.result is not None:
                progress(*job.status)
        except BaseException:
            job.cancelled.set()  # the loader stops at its next stage; its model is never swapped in
            raise
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run_job(self, job: _LoadJob, spec: ModelSpec, device: str | None, dtype: str | None) -> None:
        try:
            while not self._load_lock.acquire(timeout=_WAIT_SLICE_S):
                job.report(0, None, "waiting for another model load to finish")
            try:
                self._load_locked(job, spec, device, dtype)
            finally:
                self._load_lock.release()
        except BaseException as exc:  # handed to the waiting caller
            job.error = exc
        finally:
            job.finished.set()

    def _load_locked(self, job: _LoadJob, spec: ModelSpec, device: str | None, dtype: str | None) -> None:
        with self._state_changed:
            self._loading = spec.name
        try:
            job.report(0, 3, f"loading {spec.name}")
            loaded = load_model(
                spec,
                device,
                dtype,
                device_map=self.device_map,
                n_devices=self.n_devices,
                trust_remote_code=self.trust_remote_code,
                progress=job.report,
            )
            # measured before the swap, so that no tool call pays for it (and cost estimates are ready at once)
            measured_throughput(ToolContext(loaded, self.limits))
            with self._model_lock:
                job.report(3, 3, f"loaded {spec.name}")  # a cancel that arrived meanwhile still wins
                with self._state_changed:
                    previous, self._model = self._model, loaded
                    self._baseline_hooks = count_hooks(loaded.bridge)
                    self._loading = None
                    self._load_error = None
                    self._state_changed.notify_all()
            del previous
            job.result = loaded
        except BaseException as exc:
            with self._state_changed:
                self._loading = None
                if self._model is None and not isinstance(exc, LoadCancelled):
                    self._load_error = str(exc) if isinstance(exc, LensError) else f"{type(exc).__name__}: {exc}"
                self._state_changed.notify_all()
            raise

    def load_in_background(self, spec_text: str, device: str | None = None, dtype: str | None = None) -> None:
        """Start loading without blocking (server start-up); tools wait for it."""
        with self._state_changed:
            self._loading = spec_text

        def run() -> None:
            try:
                self.load(spec_text, device, dtype)
                log.info("model %s loaded", spec_text)
            except BaseException as exc:
                with self._state_changed:
                    self._loading = None
                    self._load_error = str(exc)
                    self._state_changed.notify_all()
                log.error("loading model %s failed: %s", spec_text, exc)

        threading.Thread(target=run, name="lens-mcp-model-load", daemon=True).start()

    def wait_until_ready(self, progress: ProgressReporter = no_progress) -> LoadedModel:
        """Block until a model is loaded; report progress while waiting (which also checks cancellation)."""
        waited = 0.0
        while True:
            with self._state_changed:
                if self._model is not None:  # a load in progress replaces it only when done
                    return self._model
                if self._model is None and self._loading is None:
                    raise LensError(
                        f"no model is loaded: {self._load_error or 'none was requested'}. "
                        "Call load_model with a model that is available here (e.g. smollm2-135m or toy-induction)."
                    )
                self._state_changed.wait(_WAIT_SLICE_S)
                loading = self._loading
            waited += _WAIT_SLICE_S
            progress(0, None, f"waiting for model {loading} to finish loading ({waited:.0f}s)")

    # ---- use ---------------------------------------------------------------------------------
    @contextmanager
    def use(self, progress: ProgressReporter = no_progress) -> Iterator[LoadedModel]:
        """Wait for the model, hold it exclusively, and make sure no hook outlives the call."""
        self.wait_until_ready(progress)
        while not self._model_lock.acquire(timeout=_WAIT_SLICE_S):
            progress(0, None, "waiting for another tool call to finish with the model")
        try:
            model = self._model
            assert model is not None
            try:
                yield model
            finally:
                leaked = count_hooks(model.bridge) - self._baseline_hooks
                if leaked > 0:
                    log.error("a tool left %d hooks on the model; removing them", leaked)
                    model.bridge.reset_hooks(including_permanent=False)
        finally:
            self._model_lock.release()
