"""tunegate: one stable endpoint per task, served by a fine-tuned or a few-shot variant."""

__version__ = "0.1.0"
