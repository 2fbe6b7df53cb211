"""MiniZoo: an offline model zoo (single- and multi-domain experts, random-init controls), target tasks, and
measured fine-tuning ground truth. See docs/MINIZOO.md."""
from .api import (HELDOUT_SHOTS, SHOTS, TIERS, best_models, finetune_runs, ground_truth, load_model, load_task,
                  model_info, models, sgd_runs, sources, task_info, tasks)

__all__ = ["HELDOUT_SHOTS", "SHOTS", "TIERS", "best_models", "finetune_runs", "ground_truth", "load_model",
           "load_task", "model_info", "models", "sgd_runs", "sources", "task_info", "tasks"]
