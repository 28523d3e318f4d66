"""Predict on the user's own images and videos: the inputs found and looked at (inputs), the work for one
input (per_input) and the command line (cli).
"""
