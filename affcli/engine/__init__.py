"""The engine: training, evaluation, prediction, export and benchmarks over the shared models."""
