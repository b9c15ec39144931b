"""Where the registry keeps its state: one settings model, fed by arguments and the environment."""

import getpass
import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class RegistrySettings(BaseModel):
    """Embedded default: MLflow on SQLite and promotion into a folder, both under `home`.

    A team switches with the standard variables: MLFLOW_TRACKING_URI (an MLflow server) and
    LORAOPS_PROMOTION_TARGET (s3://bucket/prefix, with AWS_* credentials or a profile).
    """

    model_config = ConfigDict(frozen=True)
    home: Path
    tracking_uri: str
    promotion_target: str
    actor: str

    @classmethod
    def from_env(cls, **overrides: str | Path | None) -> "RegistrySettings":
        home = Path(overrides.pop("home", None) or os.environ.get("LORAOPS_HOME", ".loraops")).expanduser().resolve()
        values = {
            "home": home,
            "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            "promotion_target": os.environ.get("LORAOPS_PROMOTION_TARGET") or str(home / "promoted"),
            "actor": os.environ.get("LORAOPS_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def embedded(self) -> bool:
        """True when MLflow runs in-process on a local database (no tracking server)."""
        return self.tracking_uri.startswith("sqlite:")

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def digests(self) -> Path:
        """The file-digest cache (registry/digests.py)."""
        return self.home / "digests.sqlite"
