"""Scheduling: filters narrow the candidates, weighted scorers rank them, a picker chooses.

Each plugin is a small pure object (see ``framework``); a ``Profile`` wires them from
configuration (see ``profile``).
"""
