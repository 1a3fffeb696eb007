"""mmcore: missing-modality prediction with read-only prompts, VICReg and late fusion."""
from mmcore.config import Config, ConfigError
from mmcore.losses import vicreg_loss

__all__ = ["Config", "ConfigError", "vicreg_loss"]
__version__ = "0.1.0"
