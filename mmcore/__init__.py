"""mmcore: missing-modality prediction with read-only prompts, VICReg and late fusion.

The package imports only the configuration, so ``python -m mmcore --help`` answers at
once; the rest is imported from its module (``mmcore.losses.vicreg_loss``, ...).
"""
from mmcore.config import Config, ConfigError

__all__ = ["Config", "ConfigError"]
__version__ = "0.1.0"
