"""Request streams: what arrives, when, and how long it is.

A :class:`Workload` is columnar (numpy arrays, one row per request, sorted by arrival) so that a million
synthetic requests cost a few arrays rather than a million objects. The simulator, the benchmark client and the
experiments all take their requests from here, so a study can swap a real trace for a synthetic stream (or
re-time a trace to a different rate) without touching the backend.

Sources:

- :func:`load_azure_trace`: Azure-style CSV traces (``TIMESTAMP, ContextTokens, GeneratedTokens``), replayed
  on their own timestamps or re-timed to a rate.
- :func:`load_sharegpt`: ShareGPT JSON conversations (prompt texts kept for live backends).
- :func:`synthetic`: heavy-tailed lengths whose defaults match the Azure 2023 conversation trace.
- :func:`arrival_times`: Poisson / gamma-burstiness / all-at-once arrivals, as ``vllm bench serve`` draws them.

Conventions shared by every source:

- **Length caps drop, never clip.** A request whose prompt is longer than ``max_prompt_len`` or whose output is
  longer than ``max_output_len`` is left out (trace rows and conversations are skipped; synthetic lengths are
  drawn from the distribution truncated at the cap). Dropping keeps every request's prompt text and length in
  agreement, which clipping could not do for real prompts.
- ``num_requests`` counts requests *after* the caps; asking for more than the source holds is an error.
- **Everything is seeded.** Randomness comes from ``np.random.default_rng`` streams derived from ``seed``;
  arrivals and lengths use separate streams, so changing the rate of a synthetic workload keeps its lengths.
- Bad input raises one :class:`WorkloadError` (a ``ValueError``) naming the file, the row and what is valid.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from balanceroute.protocol.prompt_key import prompt_hash

log = logging.getLogger(__name__)

#: Azure trace columns.
TIMESTAMP, CONTEXT_TOKENS, GENERATED_TOKENS = "TIMESTAMP", "ContextTokens", "GeneratedTokens"

#: Azure LLM inference trace 2023, conversation: mean prompt / output tokens (see ../shared/traces/README.md).
AZURE_CONV_PROMPT_MEAN, AZURE_CONV_OUTPUT_MEAN = 1155, 211
#: Lognormal shape fitted to the same trace by its mean/median ratio, sigma = sqrt(2 ln(mean/median)):
#: prompt 1155/1020 -> 0.4986, output 211/129 -> 0.9920. Matching mean and median pins the body of the
#: distribution; the trace's tails differ (trace p99: prompt 4142, output 601; this lognormal: about 3270 and
#: 1300), because no single lognormal matches the trace's median, mean and spread at once.
AZURE_CONV_PROMPT_SIGMA = math.sqrt(2 * math.log(1155 / 1020))
AZURE_CONV_OUTPUT_SIGMA = math.sqrt(2 * math.log(211 / 129))

#: ShareGPT fallback token estimate when no tokenizer is given: about 4 characters per token (English text
#: with GPT/Llama-style BPE tokenizers). Approximate: real counts differ by tens of percent for code or
#: non-English text, so pass a tokenizer for live runs where prompt lengths must be exact.
CHARS_PER_TOKEN = 4

DISTRIBUTIONS = ("lognormal", "exponential", "constant")

# independent random streams derived from one seed
_ARRIVALS, _LENGTHS, _SAMPLE = 0, 1, 2
_MAX_LISTED = 5  # bad rows quoted in one error message


class WorkloadError(ValueError):
    """A workload source or parameter is invalid; the message names the file, the row and what is valid."""


class Tokenizer(Protocol):
    """Anything with ``encode(text) -> list`` (a Hugging Face tokenizer qualifies)."""

    def encode(self, text: str) -> Sequence[Any]: ...


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order.

    - ``arrival_s``: arrival time in seconds from the start of the run (float64, non-decreasing).
    - ``prompt_len``: prompt tokens (int64, >= 1).
    - ``output_len``: output tokens to generate (int64, >= 1).
    - ``prompt_hash``: integer key of the prompt text, 0 where unknown (int64); exact-match predictors use it.
    - ``prompts``: prompt texts for live backends, or None (the simulator needs only lengths).
    - ``name``: where the workload came from (for result files).

    Construction converts the arrays to these dtypes and checks the invariants above, so every backend can
    rely on them. Indexing (``wl[:100]``, ``wl[mask]``, ``wl[idx]``) returns a sub-workload; arrival times are
    kept as they are (not shifted to start at zero).
    """

    arrival_s: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    prompt_hash: np.ndarray
    prompts: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        cols = {"arrival_s": np.float64, "prompt_len": np.int64, "output_len": np.int64, "prompt_hash": np.int64}
        for field, dtype in cols.items():
            arr = np.asarray(getattr(self, field))
            if arr.ndim != 1:
                raise WorkloadError(f"Workload.{field} must be 1-D, got shape {arr.shape}")
            object.__setattr__(self, field, arr.astype(dtype, copy=False))
        n = len(self.arrival_s)
        lengths = {f: len(getattr(self, f)) for f in cols}
        if self.prompts is not None:
            lengths["prompts"] = len(self.prompts)
        if set(lengths.values()) != {n}:
            raise WorkloadError(f"Workload columns must have equal lengths, got {lengths}")
        for field in ("prompt_len", "output_len"):
            bad = np.flatnonzero(getattr(self, field) < 1)
            if bad.size:
                raise WorkloadError(f"Workload.{field} must be >= 1; request {int(bad[0])} has "
                                    f"{int(getattr(self, field)[bad[0]])}")
        if n and not np.all(np.isfinite(self.arrival_s)):
            raise WorkloadError("Workload.arrival_s must be finite")
        if n > 1 and np.any(np.diff(self.arrival_s) < 0):
            i = int(np.flatnonzero(np.diff(self.arrival_s) < 0)[0]) + 1
            raise WorkloadError(f"Workload.arrival_s must be non-decreasing; request {i} arrives at "
                                f"{self.arrival_s[i]} after {self.arrival_s[i - 1]}")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __getitem__(self, index: slice | np.ndarray | Sequence[int]) -> Workload:
        """Sub-workload of the selected requests (a slice, boolean mask or increasing index array)."""
        if isinstance(index, (int, np.integer)):
            raise TypeError("Workload[i] with a single integer is not supported; use wl[i:i+1]")
        sel = np.arange(len(self))[index]
        prompts = None if self.prompts is None else [self.prompts[i] for i in sel]
        return Workload(self.arrival_s[sel], self.prompt_len[sel], self.output_len[sel], self.prompt_hash[sel],
                        prompts, self.name)

    def head(self, n: int) -> Workload:
        """The first ``n`` requests."""
        return self[:n]

    def with_arrivals(self, arrival_s: np.ndarray) -> Workload:
        """The same requests with new arrival times (one per request, non-decreasing)."""
        return replace(self, arrival_s=arrival_s)


# ---- arrivals ---------------------------------------------------------------------------------------------------

def _rng(seed: int, stream: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WorkloadError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([stream, int(seed)])


def _check_rate(rate: float, burstiness: float) -> tuple[float, float]:
    try:
        rate, burstiness = float(rate), float(burstiness)
    except (TypeError, ValueError):
        raise WorkloadError(f"rate and burstiness must be numbers, got rate={rate!r}, "
                            f"burstiness={burstiness!r}") from None
    if not rate > 0:  # also rejects NaN
        raise WorkloadError(f"rate must be > 0 requests/s (or inf: all requests at t=0), got {rate}")
    if not burstiness > 0:
        raise WorkloadError(f"burstiness must be > 0 (1 = Poisson, < 1 burstier, > 1 smoother, "
                            f"inf = evenly spaced), got {burstiness}")
    return rate, burstiness


def arrival_times(n: int, rate: float, *, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival times (s) of ``n`` requests at ``rate`` requests/s; the first arrives at t = 0.

    Inter-arrival gaps follow ``vllm bench serve``: gamma with shape ``burstiness`` and mean ``1/rate``
    (burstiness 1 is a Poisson process; coefficient of variation ``1/sqrt(burstiness)``); burstiness inf gives
    evenly spaced arrivals; rate inf puts every request at t = 0. Unlike vLLM, the gaps are not rescaled to make
    the last arrival land exactly at ``n/rate``: this is a plain renewal process.
    """
    rate, burstiness = _check_rate(rate, burstiness)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise WorkloadError(f"number of requests must be an integer >= 0, got {n!r}")
    out = np.zeros(n)
    if n <= 1 or math.isinf(rate):
        return out
    if math.isinf(burstiness):
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        gaps = _rng(seed, _ARRIVALS).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    np.cumsum(gaps, out=out[1:])
    return out


# ---- shared helpers -------------------------------------------------------------------------------------------

def _check_count(name: str, value: int | None, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise WorkloadError(f"{name} must be an integer >= {minimum} or None, got {value!r}")
    return int(value)


def _keep_mask(prompt_len: np.ndarray, output_len: np.ndarray, max_prompt_len: int | None,
               max_output_len: int | None) -> np.ndarray:
    keep = np.ones(len(prompt_len), dtype=bool)
    if max_prompt_len is not None:
        keep &= prompt_len <= max_prompt_len
    if max_output_len is not None:
        keep &= output_len <= max_output_len
    return keep


def _take_first(n_avail: int, num_requests: int | None, source: str) -> int:
    if num_requests is None:
        return n_avail
    if num_requests > n_avail:
        raise WorkloadError(f"{source}: num_requests={num_requests} but only {n_avail} requests are available "
                            f"(after length caps); valid: 1..{n_avail} or None for all")
    return num_requests


def _rows_message(df: pd.DataFrame, column: str, bad: np.ndarray) -> str:
    """"column C: data row 3 (line 4): '-5'; ..." for the first few bad rows of a trace frame.

    The data row counts non-blank rows after the header (1-based); the frame's index is the row's position
    among all lines after the header, so ``index + 2`` is its line in the file.
    """
    rows = np.flatnonzero(bad)
    values = df[column].to_numpy()[rows[:_MAX_LISTED]]
    parts = [f"data row {r + 1} (line {df.index[r] + 2}): "
             f"{'empty' if pd.isna(v) else repr(v.item() if isinstance(v, np.generic) else v)}"
             for r, v in zip(rows, values)]
    more = f" and {len(rows) - _MAX_LISTED} more rows" if len(rows) > _MAX_LISTED else ""
    return f"column {column}: " + "; ".join(parts) + more


# ---- Azure-style CSV traces -------------------------------------------------------------------------------------

def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # blank lines are read as empty rows and then dropped, so the index keeps each row's real line number
        df = pd.read_csv(path, skipinitialspace=True, skip_blank_lines=False)
        return df[df.notna().any(axis=1)]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise WorkloadError(f"{path}: cannot read trace CSV ({type(exc).__name__}: {exc}); expected a CSV file "
                            f"with header {TIMESTAMP},{CONTEXT_TOKENS},{GENERATED_TOKENS}") from None


def _token_column(df: pd.DataFrame, column: str) -> tuple[np.ndarray, str | None]:
    """Integer token counts of ``column`` and a description of its bad rows (None when all are valid)."""
    raw = df[column]
    num = raw if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isfinite(values) & (values >= 1) & (values == np.floor(values)))
    if not bad.any():
        return values.astype(np.int64), None
    return values, _rows_message(df, column, bad)


def _timestamps_s(df: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    """Seconds (float64) from a TIMESTAMP column of datetimes (ISO 8601) or plain numbers of seconds."""
    raw = df[TIMESTAMP]
    if pd.api.types.is_numeric_dtype(raw):
        sec = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
        sec = np.where(parsed.isna(), np.nan, (parsed - parsed.min()).dt.total_seconds().to_numpy(na_value=np.nan))
    bad = ~np.isfinite(sec)
    if not bad.any():
        return sec, None
    return sec, _rows_message(df, TIMESTAMP, bad)


def load_azure_trace(path: str | Path, *, num_requests: int | None = None, rate: float | None = None,
                     burstiness: float = 1.0, time_scale: float | None = None, max_prompt_len: int | None = None,
                     max_output_len: int | None = None, seed: int = 0) -> Workload:
    """Requests from an Azure-style trace CSV with columns TIMESTAMP, ContextTokens, GeneratedTokens.

    Rows are ordered by TIMESTAMP (stable), requests over the length caps are dropped, then the first
    ``num_requests`` are kept (all when None). Arrivals:

    - default: the trace's own timestamps relative to the first kept request (TIMESTAMP is ISO 8601 datetimes,
      as in the Azure traces, or plain numbers of seconds);
    - ``time_scale``: the trace's inter-arrival gaps multiplied by this factor (0.5 = twice the rate);
    - ``rate`` (requests/s, inf allowed) and ``burstiness``: re-timed by :func:`arrival_times` with ``seed``;
      TIMESTAMP is then optional. ``rate`` and ``time_scale`` exclude each other.

    Any bad input raises one :class:`WorkloadError` naming the file, the bad rows (1-based data row and file
    line) and what is valid: unreadable file, missing columns, no data rows, lengths that are not whole numbers
    >= 1, unparseable timestamps.
    """
    path = Path(path)
    num_requests = _check_count("num_requests", num_requests, minimum=1)
    max_prompt_len = _check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = _check_count("max_output_len", max_output_len, minimum=1)
    if rate is not None and time_scale is not None:
        raise WorkloadError(f"give rate (re-time to a Poisson/gamma rate) or time_scale (stretch the trace's own "
                            f"gaps), not both; got rate={rate}, time_scale={time_scale}")
    if time_scale is not None and not (isinstance(time_scale, (int, float)) and 0 < time_scale < math.inf):
        raise WorkloadError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    if rate is not None:
        _check_rate(rate, burstiness)

    df = _read_csv(path)
    required = [CONTEXT_TOKENS, GENERATED_TOKENS] + ([TIMESTAMP] if rate is None else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise WorkloadError(f"{path}: missing column(s) {missing}; found {list(df.columns)}; a trace needs "
                            f"{TIMESTAMP},{CONTEXT_TOKENS},{GENERATED_TOKENS} ({TIMESTAMP} optional when a rate "
                            f"is given)")
    if len(df) == 0:
        raise WorkloadError(f"{path}: no data rows after the header; a trace needs at least one request")

    prompt, bad_prompt = _token_column(df, CONTEXT_TOKENS)
    output, bad_output = _token_column(df, GENERATED_TOKENS)
    ts, bad_ts = _timestamps_s(df) if rate is None else (np.zeros(len(df)), None)
    problems = [p for p in (bad_ts, bad_prompt, bad_output) if p]
    if problems:
        raise WorkloadError(f"{path}: invalid values ({'; '.join(problems)}); valid: {CONTEXT_TOKENS} and "
                            f"{GENERATED_TOKENS} whole numbers >= 1, {TIMESTAMP} an ISO 8601 datetime or "
                            f"seconds")

    order = np.argsort(ts, kind="stable")
    ts, prompt, output = ts[order], prompt[order], output[order]
    keep = _keep_mask(prompt, output, max_prompt_len, max_output_len)
    ts, prompt, output = ts[keep], prompt[keep], output[keep]
    n = _take_first(len(prompt), num_requests, str(path))
    ts, prompt, output = ts[:n], prompt[:n], output[:n]

    if rate is not None:
        arrivals = arrival_times(n, rate, burstiness=burstiness, seed=seed)
    else:
        arrivals = ts - ts[0] if n else ts
        if time_scale is not None:
            arrivals = arrivals * time_scale
    log.info("loaded %d requests from %s (%d dropped by length caps)", n, path, int((~keep).sum()))
    return Workload(arrivals, prompt, output, np.zeros(n, dtype=np.int64), None, path.stem)


# ---- ShareGPT ---------------------------------------------------------------------------------------------------

def _first_exchange(entry: Any, index: int, path: Path) -> tuple[str, str] | None:
    """(first human turn, first gpt reply after it) of one ShareGPT entry, None when it has no such pair."""
    conv = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
        raise WorkloadError(f"{path}: entry [{index}] (0-based) is not a ShareGPT conversation; valid: "
                            f'{{"conversations": [{{"from": "human", "value": "..."}}, '
                            f'{{"from": "gpt", "value": "..."}}, ...]}}')
    prompt = None
    for turn in conv:
        value = turn.get("value")
        if not isinstance(value, str):
            continue
        if prompt is None and turn.get("from") == "human":
            prompt = value
        elif prompt is not None and turn.get("from") == "gpt":
            return prompt, value
    return None


def _token_counter(tokenizer: Tokenizer | None) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda text: -(-len(text) // CHARS_PER_TOKEN)  # ceil(chars / 4), see CHARS_PER_TOKEN
    if not callable(getattr(tokenizer, "encode", None)):
        raise WorkloadError(f"tokenizer must have an encode(text) -> list method, got {type(tokenizer).__name__}")
    return lambda text: len(tokenizer.encode(text))


def load_sharegpt(path: str | Path, *, num_requests: int | None = None, tokenizer: Tokenizer | None = None,
                  rate: float = math.inf, burstiness: float = 1.0, seed: int = 0, shuffle: bool = True,
                  max_prompt_len: int | None = None, max_output_len: int | None = None) -> Workload:
    """Requests from a ShareGPT JSON file: a list of ``{"conversations": [{"from", "value"}, ...]}``.

    Each conversation gives one request: its first ``human`` turn is the prompt, the first ``gpt`` reply after
    it sets the output length. Conversations without such a pair, or whose prompt or reply is empty, are
    skipped; so are those over the length caps. Like ``vllm bench serve``, conversations are shuffled with
    ``seed`` before the first ``num_requests`` usable ones are taken (``shuffle=False`` keeps file order);
    only those are tokenized.

    Token lengths come from ``tokenizer.encode(text)`` (special tokens as the tokenizer adds them by default)
    or, without a tokenizer, from the approximate estimate ``ceil(characters / 4)`` (:data:`CHARS_PER_TOKEN`).
    Prompt texts are kept in ``Workload.prompts``; ``prompt_hash`` is :func:`prompt_hash` of the text.
    Arrivals: :func:`arrival_times` with ``rate``, ``burstiness`` and ``seed`` (default rate inf: all at t=0).
    """
    path = Path(path)
    num_requests = _check_count("num_requests", num_requests, minimum=1)
    max_prompt_len = _check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = _check_count("max_output_len", max_output_len, minimum=1)
    _check_rate(rate, burstiness)
    count_tokens = _token_counter(tokenizer)
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read ShareGPT JSON ({type(exc).__name__}: {exc}); expected a JSON "
                            f"list of conversations") from None
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: top level is {type(data).__name__}; valid: a JSON list of conversations")

    order = _rng(seed, _SAMPLE).permutation(len(data)) if shuffle else np.arange(len(data))
    prompts: list[str] = []
    prompt_lens: list[int] = []
    output_lens: list[int] = []
    skipped = 0
    for i in order:
        if num_requests is not None and len(prompts) == num_requests:
            break
        pair = _first_exchange(data[i], int(i), path)
        if pair is None or not pair[0] or not pair[1]:
            skipped += 1
            continue
        p_len, o_len = count_tokens(pair[0]), count_tokens(pair[1])
        if (p_len < 1 or o_len < 1 or (max_prompt_len is not None and p_len > max_prompt_len)
                or (max_output_len is not None and o_len > max_output_len)):
            skipped += 1
            continue
        prompts.append(pair[0])
        prompt_lens.append(p_len)
        output_lens.append(o_len)
    n = _take_first(len(prompts), num_requests, str(path))
    if n == 0:
        raise WorkloadError(f"{path}: no usable conversation (a human turn followed by a gpt reply, both "
                            f"non-empty and within the length caps) among {len(data)} entries")
    log.info("loaded %d ShareGPT requests from %s (%d conversations skipped)", n, path, skipped)
    hashes = np.fromiter((prompt_hash(p) for p in prompts), dtype=np.int64, count=n)
    return Workload(arrival_times(n, rate, burstiness=burstiness, seed=seed), np.asarray(prompt_lens),
                    np.asarray(output_lens), hashes, prompts, path.stem)


# ---- synthetic --------------------------------------------------------------------------------------------------

def _length_sampler(distribution: str, mean: float, sigma: float, rng: np.random.Generator
                    ) -> Callable[[int], np.ndarray]:
    """Draws integer lengths >= 1 with (before rounding) the given mean."""
    if distribution == "lognormal":
        mu = math.log(mean) - sigma ** 2 / 2  # E[X] = exp(mu + sigma^2/2) = mean
        draw = lambda k: rng.lognormal(mu, sigma, k)  # noqa: E731
    elif distribution == "exponential":
        draw = lambda k: rng.exponential(mean, k)  # noqa: E731
    else:  # constant
        draw = lambda k: np.full(k, float(mean))  # noqa: E731
    return lambda k: np.maximum(1, np.rint(draw(k))).astype(np.int64)


def _draw_capped(sample: Callable[[int], np.ndarray], n: int, cap: int | None, what: str) -> np.ndarray:
    """``n`` lengths from ``sample`` truncated at ``cap`` (rejection sampling in vectorised batches)."""
    out = sample(n)
    if cap is None:
        return out
    bad = np.flatnonzero(out > cap)
    size = max(4096, 2 * bad.size)
    for _ in range(64):
        if bad.size == 0:
            return out
        batch = sample(size)
        fits = batch[batch <= cap]
        accepted = fits.size / size
        if accepted < 1e-3:
            break
        fits = fits[: bad.size]
        out[bad[: fits.size]] = fits
        bad = bad[fits.size:]
        size = max(4096, int(bad.size / accepted * 1.2) + 16)
    raise WorkloadError(f"max_{what}_len={cap} keeps too little of the {what} length distribution "
                        f"({accepted:.3%} of draws fit, need >= 0.1%); raise the cap or lower {what}_mean")


def synthetic(num_requests: int, *, rate: float, burstiness: float = 1.0,
              prompt_mean: float = AZURE_CONV_PROMPT_MEAN, output_mean: float = AZURE_CONV_OUTPUT_MEAN,
              distribution: str = "lognormal", prompt_sigma: float = AZURE_CONV_PROMPT_SIGMA,
              output_sigma: float = AZURE_CONV_OUTPUT_SIGMA, seed: int = 0, max_prompt_len: int | None = None,
              max_output_len: int | None = None) -> Workload:
    """``num_requests`` synthetic requests with heavy-tailed lengths and :func:`arrival_times` arrivals.

    ``distribution`` (for both prompt and output lengths):

    - ``lognormal`` (default): with mean ``*_mean`` and log-space sd ``*_sigma``; the defaults reproduce the
      Azure 2023 conversation trace's mean and median (see :data:`AZURE_CONV_PROMPT_SIGMA`);
    - ``exponential``: with mean ``*_mean``;
    - ``constant``: every request exactly ``*_mean`` tokens (closed-form tests).

    Lengths are rounded to integers and at least 1; with a cap, drawn from the distribution truncated at it
    (the mean then drops accordingly). Arrival and length randomness use separate streams of ``seed``.
    """
    num_requests = _check_count("num_requests", num_requests, minimum=0)
    if num_requests is None:
        raise WorkloadError("num_requests must be an integer >= 0, got None")
    if distribution not in DISTRIBUTIONS:
        raise WorkloadError(f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    for name, value in (("prompt_mean", prompt_mean), ("output_mean", output_mean),
                        ("prompt_sigma", prompt_sigma), ("output_sigma", output_sigma)):
        if not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise WorkloadError(f"{name} must be a finite number > 0, got {value!r}")
    max_prompt_len = _check_count("max_prompt_len", max_prompt_len, minimum=1)
    max_output_len = _check_count("max_output_len", max_output_len, minimum=1)
    arrivals = arrival_times(num_requests, rate, burstiness=burstiness, seed=seed)
    rng = _rng(seed, _LENGTHS)
    prompt = _draw_capped(_length_sampler(distribution, prompt_mean, prompt_sigma, rng), num_requests,
                          max_prompt_len, "prompt")
    output = _draw_capped(_length_sampler(distribution, output_mean, output_sigma, rng), num_requests,
                          max_output_len, "output")
    return Workload(arrivals, prompt, output, np.zeros(num_requests, dtype=np.int64), None,
                    f"synthetic-{distribution}")
