"""Drive a workload against an OpenAI endpoint on its arrival schedule and collect per-request outcomes.

Schedule. Request i is due at ``t0 + arrival_s[i] - arrival_s[0]`` (the workload already holds Poisson / gamma
/ re-timed trace / all-at-once arrivals). A dispatcher sleeps until each due time with ``asyncio.sleep`` and
starts the request as its own task, so a slow response never delays later arrivals. With ``max_concurrency``
the dispatcher first waits for a free slot, in arrival order: a request then leaves when both its due time
and its slot have come (``queue_s`` records the wait for the slot, as vLLM's client queue time).
``arrival_s`` in the records is when the request was actually sent and ``lateness_s`` how much later that was
than it should have been (max of due time and slot time): the client's own scheduling error, which
:mod:`benchmarks.bench_client_capacity` keeps below 2 ms at 99th percentile.

Warm-up requests (the first ``warmup`` prompts) run before the clock starts and are not recorded. Each request
has a total timeout. SIGINT (with ``handle_sigint``) or ``stop`` ends the run early: no new requests, the ones
in flight are cancelled and recorded as ``unfinished``, and the result is marked ``interrupted``.

Request ids. Request i goes out with the header ``X-Request-Id: <request_id_prefix>-<i>`` (warm-up requests
``<prefix>-warmup-<i>``), which vLLM adopts as its request id and a routing proxy echoes: a server-side log
(vLLM's, the balanceroute plugin's decision log) can then be joined to ``requests.parquet``. The prefix is
recorded in the summary and is random per run unless given, so repeated runs never reuse an id.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import numpy as np

from balanceroute.bench.endpoint import Outcome, build_payload, endpoint_kind, send_request
from balanceroute.bench.progress import Progress
from balanceroute.bench.prompts import prompt_texts
from balanceroute.bench.result import BenchResult, RunInfo, build_result
from balanceroute.policies.checks import int_problem, number_problem
from balanceroute.protocol.headers import REQUEST_ID_HEADER
from balanceroute.protocol.tokenizer import TextTokenizer
from balanceroute.workload import Workload

log = logging.getLogger(__name__)
#: Seconds an idle connection is kept for reuse. Below the servers' own idle timeout (vLLM's and uvicorn's
#: default is 5 s, VLLM_HTTP_TIMEOUT_KEEP_ALIVE): a longer one lets the client send a request on a connection the
#: server is closing at that moment, which fails as "Server disconnected" (seen on a live run after a pause of
#: ~5 s between arrivals). 3 s leaves room for the client's own scheduling delays on a loaded machine.
KEEPALIVE_S = 3.0

_SPIN_S = 0.0015  # final stretch of each wait spent yielding instead of sleeping (see _sleep_until)


def _check_options(max_concurrency: int | None, warmup: int, timeout_s: float | None) -> None:
    problems = {"max_concurrency": None if max_concurrency is None else int_problem(max_concurrency, 1,
                                                                                    also=" or None"),
                "warmup": int_problem(warmup, 0),
                "timeout_s": None if timeout_s is None else number_problem(timeout_s, 0, low_open=True,
                                                                           allow_inf=True, also=" or None")}
    for name, problem in problems.items():
        if problem:
            raise ValueError(f"{name} {problem}")


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("OPENAI_API_KEY")  # sent, never logged or stored
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def run_benchmark(target_url: str, workload: Workload, *, model: str, stream: bool = True,
                        ignore_eos: bool = True, continuous_usage: bool = True, max_concurrency: int | None = None,
                        warmup: int = 0, timeout_s: float | None = 600.0, seed: int = 0,
                        tokenizer: TextTokenizer | None = None, extra_body: Mapping[str, Any] | None = None,
                        worker_header: str | None = None, goodput_slo_ms: Mapping[str, float] | None = None,
                        metadata: Mapping[str, Any] | None = None, progress: bool = False,
                        save_texts: bool = False, handle_sigint: bool = False,
                        stop: asyncio.Event | None = None, request_id_prefix: str | None = None,
                        stall_timeout_s: float | None = None) -> BenchResult:
    """Send ``workload`` to ``target_url`` (a full ``.../v1/completions`` or ``.../v1/chat/completions`` URL).

    - ``model``: the served model name sent in every request.
    - ``stream``: SSE streaming (TTFT/TPOT/ITL need it; non-streaming runs measure E2EL only).
    - ``ignore_eos``: send ``ignore_eos`` and ``max_tokens`` = the workload's output length, so vLLM
      generates exactly the trace's lengths; off for servers without the extension (``max_tokens`` stays a cap).
    - ``continuous_usage``: ask for per-chunk usage (vLLM extension) for exact per-chunk token counts.
    - ``max_concurrency``: at most this many requests in flight; ``warmup``: unrecorded requests first.
    - ``timeout_s``: per-request total timeout; ``seed``: synthetic prompt text.
    - ``tokenizer``: makes synthetic prompts exact in length (see :mod:`balanceroute.protocol.synthetic`).
    - ``extra_body``: merged into every request body; ``worker_header``: response header naming the worker a
      routing proxy chose (recorded in ``worker``).
    - ``goodput_slo_ms``, ``metadata``: passed to the summary (metadata keys such as ``request_rate`` and
      ``burstiness`` are copied into it as ``vllm bench serve`` records them).
    - ``progress``: a progress bar on stderr (else a progress log line every 10 s, :mod:`.progress`);
      ``save_texts``: keep generated texts (for ``--save-detailed``).
    - ``handle_sigint`` / ``stop``: end early (see the module docstring).
    - ``stall_timeout_s``: end the run when requests are outstanding and none finished for this long (the
      summary then has ``stalled`` true and ``interrupted`` true); None: never.
    - ``request_id_prefix``: ``X-Request-Id`` header prefix (see the module docstring; default: random).

    Returns the :class:`BenchResult`; request failures are recorded there, never raised. Raises ValueError for
    a bad URL or option.
    """
    kind = endpoint_kind(target_url)
    _check_options(max_concurrency, warmup, timeout_s)
    texts, prompt_lens = prompt_texts(workload, tokenizer=tokenizer, seed=seed)
    chat = kind == "openai-chat"
    headers = _headers()
    prefix = request_id_prefix or f"br-{secrets.token_hex(4)}"
    output_len = workload.output_len.tolist()

    def body(i: int) -> bytes:
        return build_payload(kind, model, texts[i], output_len[i], stream=stream, ignore_eos=ignore_eos,
                             continuous_usage=continuous_usage, extra_body=dict(extra_body or {}))

    async def send(i: int, out: Outcome, tag: str = "") -> None:
        await send_request(session, target_url, body(i), out, stream=stream, chat=chat, timeout_s=timeout_s,
                           headers={**headers, REQUEST_ID_HEADER: f"{prefix}-{tag}{i}"},
                           worker_header=worker_header)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_sigint:
        def on_sigint() -> None:
            log.warning("interrupted: stopping the run and writing a partial result (Ctrl-C again to abort)")
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C raises KeyboardInterrupt
        loop.add_signal_handler(signal.SIGINT, on_sigint)

    n = len(workload)
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, keepalive_timeout=KEEPALIVE_S)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            await _warm_up(send, min(warmup, n), max_concurrency)
            outcomes: list[Outcome | None] = [None] * n
            due = np.asarray(workload.arrival_s - (workload.arrival_s[0] if n else 0.0), dtype=np.float64)
            release = np.full(n, np.nan)
            tracker = Progress(n, bar=progress)
            watchdog = asyncio.create_task(tracker.watch(stall_timeout_s, stop)) if stall_timeout_s else None
            t0 = time.perf_counter()
            interrupted = await _dispatch(send, due + t0, release, outcomes, max_concurrency, stop, tracker,
                                          save_texts)
            duration = time.perf_counter() - t0
            if watchdog is not None:
                watchdog.cancel()
            tracker.close()
    finally:
        if handle_sigint:
            loop.remove_signal_handler(signal.SIGINT)
    info = RunInfo(target_url=target_url, endpoint_type=kind, model=model, stream=stream, ignore_eos=ignore_eos,
                   max_concurrency=max_concurrency, warmup=min(warmup, n), seed=seed, t0=t0, duration_s=duration,
                   interrupted=interrupted, workload_name=workload.name, goodput_slo_ms=goodput_slo_ms,
                   metadata=dict(metadata or {}), request_id_prefix=prefix, stalled=tracker.stalled)
    return build_result(outcomes, workload, prompt_lens, due + t0, release, info)


async def _warm_up(send, count: int, max_concurrency: int | None) -> None:
    """Send the first ``count`` prompts, ``max_concurrency`` at a time, and forget the outcomes."""
    if count == 0:
        return
    sem = asyncio.Semaphore(max_concurrency or count)

    async def one(i: int) -> Outcome:
        async with sem:
            out = Outcome()
            await send(i, out, "warmup-")
            return out

    outs = await asyncio.gather(*(one(i) for i in range(count)))
    failed = [o.error for o in outs if o.status != "completed"]
    log.info("warm-up: %d requests, %d failed %s", count, len(failed), sorted(set(failed)) if failed else "")


async def _sleep_until(deadline: float) -> None:
    """Sleep until ``deadline`` (perf_counter) with sub-millisecond accuracy.

    asyncio's selector rounds its wait up to whole milliseconds, so a plain ``asyncio.sleep`` wakes up to
    ~1 ms late; the last :data:`_SPIN_S` is spent yielding to the loop (``sleep(0)``), which keeps responses
    flowing while it waits.
    """
    delay = deadline - time.perf_counter() - _SPIN_S
    if delay > 0:
        await asyncio.sleep(delay)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0)


async def _dispatch(send, due: np.ndarray, release: np.ndarray, outcomes: list[Outcome | None],
                    max_concurrency: int | None, stop: asyncio.Event, progress: Progress, save_texts: bool) -> bool:
    """Start every request at its due time; wait for all of them or for ``stop``. True if stopped early."""
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks: set[asyncio.Task] = set()

    async def one(i: int, out: Outcome) -> None:
        progress.started()
        try:
            await send(i, out)
        finally:
            if sem is not None:
                sem.release()
            progress.finished(out.status)

    async def schedule() -> None:
        for i, when in enumerate(due.tolist()):
            slot = -math.inf
            if sem is not None:
                await sem.acquire()
                slot = time.perf_counter()
            await _sleep_until(when)
            release[i] = max(when, slot)
            out = Outcome(text_parts=[] if save_texts else None)
            outcomes[i] = out
            task = asyncio.create_task(one(i, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))

    main = asyncio.create_task(schedule())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not main.done():
        main.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(main, *tasks, return_exceptions=True)
        return True
    main.result()
    return False
