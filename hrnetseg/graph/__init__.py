"""ONNX graph work found by structure: inspection, the head's Resize nodes, output nodes for atc (structure),
the Resize rewrite (resize_rewrite) and what it costs in ONNX Runtime (rewrite_check). Needs onnx, no torch.
"""
