"""latency-sensitivity: measure how LLM inference latency responds to context length and concurrency."""

__version__ = "0.1.0"
