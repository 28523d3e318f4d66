"""HRNetV2-W48 + OCR on Cityscapes: export, deploy and evaluate.

The package by concern (docs/architecture.md tells how data flows through it):

    model/        the network, presets, the official checkpoint, export to ONNX, random weights   (torch)
    graph/        ONNX graph work by structure: Resize nodes, output nodes, the rewrite and its check (onnx)
    data/         Cityscapes facts, preprocess and its manifest, synthetic scenes, pictures, videos  (Atlas side)
    runner/       the local runner, a stand-in for ais_bench: every fact of ais_bench's format     (Atlas side)
    backends/     ONNX Runtime, OpenVINO and PyTorch behind one small interface
    evaluation/   model outputs -> upsample + argmax -> confusion matrix -> mIoU; streaming; multi-scale
    prediction/   predict on your own images and videos
    atlas/        the accuracy/throughput table, the CI gate, the .om sidecar                      (Atlas side)
    scaleout/     evaluation and prediction on a Ray cluster
    bench/        the benchmark (python -m hrnetseg.bench)
    util/         errors and exit codes, CLI habits, files, locks, processes, workers, numerics   (Atlas side)

    infer, evaluate, predict, sample_data, metrics: the `python3 -m hrnetseg.X` entry points, thin.

Kept import-light on purpose: the Atlas-side steps import this package in a Python that has no torch.
"""

__version__ = "0.1.0"
