"""From model outputs to mIoU: reading ais_bench outputs (model_outputs), upsample + argmax
(upsample_argmax), the confusion matrix and scores (metrics), the postprocess step (postprocess), streaming
evaluation (streaming, cli) and multi-scale + flip testing (multiscale; its flags: tta_flags). Atlas-side: valid
Python 3.7, no torch.
"""
