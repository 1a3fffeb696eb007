"""mmcore: missing-modality prediction with read-only prompts, VICReg and late fusion."""
from mmcore.config import Config, ConfigError

__all__ = ["Config", "ConfigError"]
__version__ = "0.1.0"
