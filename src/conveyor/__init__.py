"""Conveyor: run machine-learning code reproducibly on other machines."""

__version__ = "0.1.0"
