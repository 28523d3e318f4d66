"""Data in and out of the model: Cityscapes facts (cityscapes), pictures decoded safely within the pixel budget
(images), the preprocess step and its manifest (preprocess, manifest), synthetic Cityscapes-layout scenes
(sample_scenes), pictures and videos written and read (pictures, videos). Atlas-side: valid Python 3.7, no torch.
"""
