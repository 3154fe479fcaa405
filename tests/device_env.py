"""The environment of a test's child process that needs n CPU devices."""
import os

from spec_cascade import simulate_pod


def cpu_devices_env(n: int) -> dict[str, str]:
  """os.environ with JAX on n CPU devices; the other XLA flags (scripts/test.sh's) are kept."""
  return simulate_pod.cpu_devices_env(dict(os.environ), n)
