"""Export: ONNX, OpenVINO, quantization, parity verification, bedside packaging."""
