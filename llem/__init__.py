"""llem: measure what LLM inference costs — energy, throughput, latency, memory — per Hydra job."""

__version__ = "0.1.0"
