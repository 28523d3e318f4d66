"""From model outputs to mIoU: reading ais_bench outputs (model_outputs), upsample + argmax
(upsample_argmax), the confusion matrix and scores (metrics), the postprocess step (postprocess), streaming
evaluation (streaming, cli), multi-scale + flip testing (multiscale; its flags: tta_flags), the worst images
(worst_images) and the HTML report (report). Atlas-side: valid Python 3.7, no torch.
"""
