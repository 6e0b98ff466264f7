"""GPU energy: NVML access (nvml.py) and measurement windows with a sampler (window.py)."""
