"""The step-time model of the simulated engine: a roofline for one vLLM engine step.

Calibrated for a Llama-3-8B-shaped model (8.03 B parameters, 32 layers, 8 KV heads of
dimension 128, bf16) on one H100-SXM-80GB. Sources and derivations of the constants:

* ``weight_bytes`` = 8.03e9 params x 2 bytes = 16.06 GB: every step streams all weights.
* ``mem_bandwidth`` = 3.0e12 B/s: H100-SXM HBM3 peak is 3.35 TB/s (NVIDIA datasheet);
  ~90 % is what memory-bound kernels reach. Weight floor = 16.06e9 / 3e12 = 5.35 ms.
* ``kv_bytes_per_token`` = 32 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes
  = 131,072 B = 128 KiB per context token; every sequence in the batch reads its context.
* ``prefill_tokens_per_s`` = 33,000 uncached tokens/s: measured vLLM prefill throughput
  of an 8B model on one H100 for 2-4k-token prompts (~16 GFLOP/token, i.e. ~53 % MFU of
  the 989 dense bf16 TFLOPS). Decode tokens use the same compute rate.
* ``step_overhead_s`` = 1.6 ms and ``per_seq_overhead_s`` = 0.085 ms: the CPU-side cost
  of a step (scheduler, input preparation, kernel launches, sampling, detokenisation)
  that the roofline does not see. Chosen so that the model reproduces public vLLM runs
  with ~200-token prompts (figures given in the project brief): decode step
  ~7 ms + ~0.1 ms x running requests.

Step time (seconds)::

    memory  = (weight_bytes + kv_bytes_per_token * context_tokens) / mem_bandwidth
    compute = (prefill_tokens + decode_tokens) / prefill_tokens_per_s
    step    = step_overhead_s + per_seq_overhead_s * num_seqs + max(memory, compute)

Cross-checks (``speed`` = 1):

* 1 sequence, 300 tokens of context: 1.6 + 0.085 + max(5.36, 0.03) = 7.0 ms.
* 64 sequences x 300 tokens of context: 1.6 + 5.4 + max(5.35 + 0.84, 1.9) = 13.2 ms,
  versus 7 + 0.1 x 64 = 13.4 ms from the public runs.
* A 3,000-token uncached prefill alone: 1.7 + max(5.5, 90.9) = 92.6 ms (33 k tok/s).
* Saturation (``max_num_seqs`` 256, 200-token prompts, everything queued at once, in
  simulated time; ``tests/test_sim.py::test_saturation_in_virtual_time``): with 26-28
  output tokens the model gives 106-109 req/s with no shared prefix and 171-178 req/s
  when 60 % of every prompt is a cached shared prefix, matching the ~106 and ~177 req/s
  of the public runs (which do not state output length or hit rate; at a 33 k tok/s
  prefill those two figures jointly imply roughly this combination).

A pod's ``speed`` divides the step time (0.5 = every step takes twice as long).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Constants of the step-time roofline; see the module docstring for their source."""

    weight_bytes: float = 16.06e9
    mem_bandwidth: float = 3.0e12
    kv_bytes_per_token: float = 131072.0
    prefill_tokens_per_s: float = 33000.0
    step_overhead_s: float = 1.6e-3
    per_seq_overhead_s: float = 0.085e-3

    def step_time(
        self, num_seqs: int, prefill_tokens: int, decode_tokens: int, context_tokens: int
    ) -> float:
        """Seconds one engine step takes (at speed 1).

        ``context_tokens`` is the sum over scheduled sequences of the tokens whose KV the
        step reads (already computed plus newly scheduled).
        """
        memory = (self.weight_bytes + self.kv_bytes_per_token * context_tokens) / (
            self.mem_bandwidth
        )
        compute = (prefill_tokens + decode_tokens) / self.prefill_tokens_per_s
        return (
            self.step_overhead_s
            + self.per_seq_overhead_s * num_seqs
            + (memory if memory > compute else compute)
        )
