"""waagent.conf: the typed option table, the parser and the immutable Config."""

from conf.config import Config, ConfigError, load_config, parse_config
from conf.options import OPTIONS, Option

__all__ = ["OPTIONS", "Config", "ConfigError", "Option", "load_config", "parse_config"]
