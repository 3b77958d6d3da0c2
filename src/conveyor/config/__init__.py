"""Configuration: `clearml.conf` (HOCON) over the built-in defaults (defaults.conf), under CLEARML_* variables."""

from conveyor.config.errors import ConfigError, ConfigKeyError
from conveyor.config.loader import DEFAULTS_FILE, defaults, display_path, load_config
from conveyor.config.model import Config
from conveyor.config.writer import write_api_section

__all__ = ["DEFAULTS_FILE", "Config", "ConfigError", "ConfigKeyError", "defaults", "display_path", "load_config",
           "write_api_section"]
