"""The environment of a test's child process that needs n CPU devices."""
import os


def cpu_devices_env(n: int) -> dict[str, str]:
  """os.environ with JAX on n CPU devices; the other XLA flags (scripts/test.sh's) are kept."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={n}"]))
