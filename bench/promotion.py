"""Promotion beside its anchors, on moto's S3 server over HTTP with an mlflow server on loopback.

Rows: one merged model promoted (AdapterRegistry.promote: verified, manifest last) vs boto3's `upload_file` of the
same files (no verification); the store's two full-file checksums on the same bytes, each computed in the pass that
sends them (SHA-256 of each part, which the store combines, vs CRC64NVME of the whole object, which needs awscrt on
both sides); `promote --all-passing` over N tasks vs the same N promotions one after another.
"""

import base64
import hashlib
import os
import shutil
import time
from pathlib import Path

from bench.harness import interleaved
from bench.models import adapter_for, llama_on_disk
from bench.servers import mlflow_server, moto_server, use_s3


def promotion(quick: bool, home: Path) -> list[dict]:
    from bench.cases import row

    shards, shard_bytes, tasks = (2, 8 * 2**20, 4) if quick else (4, 256 * 2**20, 8)
    home.mkdir(parents=True, exist_ok=True)
    base = llama_on_disk("tiny", home / "promotion-base", shard="200KB")
    adapter = adapter_for(base, home / "promotion-adapter")
    merged = home / "promotion-merged"  # the base's files and big shards of random bytes: what promotion moves
    shutil.rmtree(merged, ignore_errors=True)
    shutil.copytree(base, merged)
    for i in range(shards):
        with open(merged / f"extra-{i:05d}.safetensors", "wb") as f:
            for _ in range(shard_bytes // 2**22):
                f.write(os.urandom(2**22))
    size = sum(p.stat().st_size for p in merged.iterdir() if p.is_file())
    time.sleep(2.1)  # registration then hashes them as a flow does: well after they were written
    with moto_server(home) as endpoint, mlflow_server(home) as url:
        use_s3(endpoint)
        import boto3

        from registry import AdapterRegistry, RegistrySettings

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="promoted")
        registry = AdapterRegistry(
            RegistrySettings.from_env(
                home=home / "promotion-registry", tracking_uri=url, promotion_target="s3://promoted/p", actor="bench"
            )
        )
        record = registry.register_base(base, name="bench/llama-tiny")
        one = registry.register(
            "merged-task", adapter, record, "b" * 64, {"loss": 1.0}, merged_dir=merged, loader_module="pipelines.pyfunc"
        )
        files = sorted(p for p in merged.iterdir() if p.is_file())

        def clear(prefix: str = "") -> None:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="promoted", Prefix=prefix):
                for o in page.get("Contents", []):
                    s3.delete_object(Bucket="promoted", Key=o["Key"])

        promote = interleaved(
            {
                "ours": lambda: registry.promote("merged-task", one.version, "merged", progress=False),
                "anchor": lambda: [s3.upload_file(str(p), "promoted", f"raw/{p.name}") for p in files],
            },
            repeats=1 if quick else 3,
            setup=clear,
        )
        checksums = checksum_rows(s3, max(files, key=lambda p: p.stat().st_size), quick, clear)
        fleet = fleet_rows(registry, record, adapter, tasks, quick)
    rows = [
        row(
            f"promote a {size / 1e9:.2f} GB merged model, verified (bytes/s)",
            size / promote["ours"],
            size / promote["anchor"],
            "B/s",
            ">= 0.9x boto3 upload_file",
            f"{len(files)} files; ours {promote['ours']:.2f}s (files side by side, SHA-256 per part from the digest "
            f"cache, one HEAD per file, manifest last), boto3 upload_file one file after another without "
            f"verification {promote['anchor']:.2f}s",
        ),
        *checksums,
        *fleet,
    ]
    return rows


def checksum_rows(s3, path: Path, quick: bool, clear) -> list[dict]:
    """One file up in 16 MiB parts with each checksum computed in the pass that sends it, then HEAD-verified."""
    from bench.cases import row

    try:
        from awscrt import checksums
    except ImportError:
        return []

    def upload(algorithm: str) -> None:
        key = f"checksums/{algorithm}/{path.name}"
        extra = {"ChecksumType": "FULL_OBJECT"} if algorithm == "CRC64NVME" else {}
        upload_id = s3.create_multipart_upload(Bucket="promoted", Key=key, ChecksumAlgorithm=algorithm, **extra)[
            "UploadId"
        ]
        parts, whole, crc = [], b"", 0
        with open(path, "rb") as f:
            while data := f.read(16 * 2**20):
                if algorithm == "SHA256":
                    digest = hashlib.sha256(data).digest()
                    whole += digest
                else:
                    part_crc = checksums.crc64nvme(data)
                    crc = checksums.combine_crc64nvme(crc, part_crc, len(data)) if parts else part_crc
                    digest = part_crc.to_bytes(8, "big")
                value = base64.b64encode(digest).decode()
                number = len(parts) + 1
                etag = s3.upload_part(
                    Bucket="promoted",
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    **{f"Checksum{algorithm}": value},
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": number, f"Checksum{algorithm}": value})
        if algorithm == "SHA256":
            expected = f"{base64.b64encode(hashlib.sha256(whole).digest()).decode()}-{len(parts)}"
        else:
            expected = base64.b64encode(crc.to_bytes(8, "big")).decode()
            extra["ChecksumCRC64NVME"] = expected
        s3.complete_multipart_upload(
            Bucket="promoted", Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra
        )
        head = s3.head_object(Bucket="promoted", Key=key, ChecksumMode="ENABLED")
        reported = head[f"Checksum{algorithm}"].split("-")[0]  # stores differ in saying "-<parts>"
        assert reported == expected.split("-")[0], (algorithm, reported, expected)

    times = interleaved(
        {"crc64": lambda: upload("CRC64NVME"), "sha256": lambda: upload("SHA256")},
        repeats=1 if quick else 5,
        setup=lambda: clear("checksums/"),
    )
    size = path.stat().st_size
    return [
        row(
            f"S3 checksum of a {size / 1e6:.0f} MB file, CRC64NVME full-object vs SHA-256 per part (s)",
            times["crc64"],
            times["sha256"],
            "s",
            "the faster is loraops's",
            "each computed in the pass that sends the part, 16 MiB parts, HEAD-verified; moto computes the "
            "store's side in Python (CRC64NVME through awscrt over the reassembled object)",
        )
    ]


def fleet_rows(registry, record, adapter: Path, tasks: int, quick: bool) -> list[dict]:
    """N tasks whose candidate passed: `promote --all-passing` vs N promotions one after another, fresh tasks each."""
    from bench.cases import row

    def register(prefix: str) -> list[str]:
        names = [f"{prefix}-{i:03d}" for i in range(tasks)]
        for name in names:
            registry.register(
                name, adapter, record, "c" * 64, {"loss": 1.0}, loader_module="pipelines.pyfunc", gate="passed"
            )
        return names

    registry.promote("merged-task", 1, "adapter", progress=False)  # warm: connections, the S3 client
    sequential, fleet = [], []
    for round_ in range(1 if quick else 2):
        names = register(f"one-by-one-{round_}")
        started = time.perf_counter()
        for name in names:
            registry.promote(name, "candidate", "adapter", reason="gate passed", progress=False)
        sequential.append(time.perf_counter() - started)
        register(f"all-passing-{round_}")
        started = time.perf_counter()
        outcomes = registry.promote_passing(task_prefix=f"all-passing-{round_}-")
        fleet.append(time.perf_counter() - started)
        assert [o.result for o in outcomes] == ["promoted"] * tasks, outcomes
    return [
        row(
            f"promote --all-passing, {tasks} tasks (s)",
            min(fleet),
            min(sequential),
            "s",
            f"<= 0.5x {tasks} promotions one after another",
            f"adapter mode, {os.cpu_count()} cores shared with moto and mlflow server; anchor: AdapterRegistry.promote "
            f"per task in a loop (what a script over `loraops promote` does, without its process starts); best of "
            f"{len(fleet)}",
        )
    ]
