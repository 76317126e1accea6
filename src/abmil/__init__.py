"""abmil: attention-based deep multiple-instance learning."""
__version__ = "0.1.0"
