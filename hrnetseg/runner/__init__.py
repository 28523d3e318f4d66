"""The local runner, a stand-in for ais_bench: options, input bins, where files and folders go (layout: output
names, the summary's path, device lists and folders), output files, the summary file and printed lines
(summary), per-device processes. Every fact of ais_bench's format lives in this package.
Atlas-side modules (everything the postprocess reads): valid Python 3.7, no torch.
"""
