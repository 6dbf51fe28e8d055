"""How an encoder runs: torch (CPU or CUDA), ONNX Runtime and OpenVINO on exported files, and the
micro-batcher that lets concurrent searches share forward passes."""
