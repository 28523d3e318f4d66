"""Shared floor of the house: errors and exit codes (errors), command-line habits (cli), files written
atomically and checked (files), output locks (locks), cores, PIDs and children that die with their parent
(processes), worker pools (workers), numeric checks (numerics). Atlas-side: valid Python 3.7, no torch.
"""
