"""Inference backends (torch, ONNX Runtime, Triton) behind one Backend protocol."""
