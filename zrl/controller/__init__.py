"""The controller: loads an experiment, launches workers through a scheduler, drives and watches them.

Run it with `python -m zrl.controller EXPERIMENT_FILE [key=value ...]`.
"""
