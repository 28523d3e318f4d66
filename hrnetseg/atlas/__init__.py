"""The Atlas host's checks and reports: the accuracy/throughput table (acc_perf), the CI gate (ci_gate), the
.om sidecar (om_sidecar) and how figures are written (figures). Valid Python 3.7, standard library and numpy.
"""
