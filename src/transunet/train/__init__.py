"""Training: :func:`train` (config -> run folder), losses, schedule, DDP helpers, tracking.

Example::

    from transunet.config import load_config
    from transunet.train import train

    run_dir = train(load_config("configs/demo_cpu.yaml"))
"""

from transunet.train.trainer import Trainer, TrainingDivergedError, train

__all__ = ["Trainer", "TrainingDivergedError", "train"]
