"""Where the registry keeps its state: one settings model, fed by arguments and the environment."""

import getpass
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from .errors import EnvironmentSettingError

# The schemes MLflow's tracking and model registry stores accept (a bare path is a file store); "+driver" is dropped.
TRACKING_SCHEMES = (
    "",
    "file",
    "sqlite",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)


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
        values: dict[str, str | Path] = {
            "home": home,
            "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            "promotion_target": os.environ.get("LORAOPS_PROMOTION_TARGET") or str(home / "promoted"),
            "actor": os.environ.get("LORAOPS_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        check_home(Path(values["home"]))
        check_tracking_uri(str(values["tracking_uri"]))
        check_endpoint_urls()
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


def check_home(home: Path) -> None:
    """LORAOPS_HOME is a folder this process can write, or can be made in one: else one line naming the variable."""
    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == home and not home.is_dir():
        raise EnvironmentSettingError(
            f"LORAOPS_HOME={home} is a file, not a folder; point LORAOPS_HOME at a folder (it is made if missing)"
        )
    if not existing.is_dir():
        raise EnvironmentSettingError(
            f"LORAOPS_HOME={home} lies under {existing}, which is a file; point LORAOPS_HOME at a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EnvironmentSettingError(
            f"LORAOPS_HOME={home}: {'it' if existing == home else existing} is read-only for this user; point "
            f"LORAOPS_HOME at a folder you can write (loraops keeps its registry database and caches there)"
        )


def check_tracking_uri(uri: str) -> None:
    """MLFLOW_TRACKING_URI has a scheme MLflow stores accept (and a server URI names a host)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.partition("+")[0].lower()
    shown = uri if "@" not in parts.netloc else uri.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2])
    if scheme not in TRACKING_SCHEMES:
        raise EnvironmentSettingError(
            f"MLFLOW_TRACKING_URI={shown}: unknown scheme {scheme!r}; set it to http(s)://HOST:PORT of an MLflow "
            f"server or sqlite:///PATH, or unset it for the embedded registry under LORAOPS_HOME"
        )
    if scheme in ("http", "https") and not parts.hostname:
        raise EnvironmentSettingError(
            f"MLFLOW_TRACKING_URI={shown} names no host; set it to {scheme}://HOST:PORT of an MLflow server"
        )


def check_endpoint_urls() -> None:
    """AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, when set, are http(s)://HOST[:PORT] (botocore's own refusal is a
    traceback that names neither)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        value = os.environ.get(name)
        if not value:  # unset or empty: botocore uses AWS's endpoint
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EnvironmentSettingError(
                f"{name}={value!r} is not http(s)://HOST[:PORT]; set it to the S3 store's address, e.g. "
                f"http://localhost:9000, or unset it for AWS S3"
            )
