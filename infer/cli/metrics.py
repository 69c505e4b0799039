"""The lecture's metrics as the CLI prints them: TTFT, latency per token, throughput."""
import jax


def print_metrics(result, cfg_name: str, batch: int) -> None:
    m = result.metrics()
    print(f"\nmodel {cfg_name} | backend {jax.default_backend()} | batch {batch} | generated {m['num_generated']} tokens")
    print(f"{'metric':<28}{'value':>14}")
    print(f"{'TTFT (prefill + 1st token)':<28}{m['ttft_s'] * 1e3:>11.2f} ms")
    print(f"{'latency per token':<28}{m['latency_s_per_token'] * 1e3:>11.3f} ms")
    print(f"{'throughput':<28}{m['tokens_per_s']:>9.1f} tok/s")
