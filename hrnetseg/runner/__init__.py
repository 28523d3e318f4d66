"""The local runner, a stand-in for ais_bench: options, input bins, output files, the summary file and printed
block, device lists and per-device processes. Every fact of ais_bench's format lives in this package.
Atlas-side modules (everything the postprocess reads): valid Python 3.7, no torch.
"""
