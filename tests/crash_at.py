"""`python crash_at.py POINT TASK.yaml`: `loraops run TASK.yaml`, SIGKILLed by itself at POINT, the way a crash or an
OOM kill would end it: no exception, no cleanup, no atexit.

    training      after the first resumable checkpoint is written
    merge         merged shards written into the temporary folder, before it is renamed into place
    registration  the adapter logged to the MLflow run, before the model version exists
    promotion     the first part of a multipart upload sent to S3, before the upload completes
"""

import os
import signal
import sys


def kill_after(module, name: str) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapped)


def main(point: str, task: str) -> int:
    import lora_core.checkpoint_merge
    import pipelines.train
    import registry.s3_store
    import registry.versions

    targets = {
        "training": (pipelines.train, "save_checkpoint"),
        "merge": (lora_core.checkpoint_merge, "_copy_side_files"),
        "registration": (registry.versions.VersionCatalog, "_log_folder"),
        "promotion": (registry.s3_store.S3Store, "_put_part"),
    }
    kill_after(*targets[point])
    from pipelines.cli.main import main as loraops

    return loraops(["run", task])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
