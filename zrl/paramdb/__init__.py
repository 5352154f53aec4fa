"""Parameter DB: versioned, checksummed model weights that `from_pretrained` and vLLM load from disk."""

from zrl.paramdb.config import ParamDBConfig
from zrl.paramdb.db import LoadedVersion, ParamDB
from zrl.paramdb.errors import (
                                CorruptVersionError,
                                InvalidNameError,
                                ParamDBError,
                                PushError,
                                VersionExistsError,
                                VersionNotFoundError,
)

__all__ = ["CorruptVersionError", "InvalidNameError", "LoadedVersion", "ParamDB", "ParamDBConfig",
           "ParamDBError", "PushError", "VersionExistsError", "VersionNotFoundError"]
