"""The pipeline stages: sampling, batching, classification, postprocessing, and the runner."""
