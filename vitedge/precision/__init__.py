"""ONNX graph transforms shared by backends: INT8 Q/DQ, FP16 with FP32 islands, statistics, TensorRT readiness."""
