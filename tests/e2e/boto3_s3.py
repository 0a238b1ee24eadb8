"""boto3's S3 client through a SigV4 route, with botocore's default checksum
settings: over HTTPS that means PutObject and UploadPart bodies framed as
aws-chunked with a CRC32 trailer (x-amz-content-sha256:
STREAMING-UNSIGNED-PAYLOAD-TRAILER), and GetObject asking for the checksum
to validate. The agent token is the access key id; the broker discards the
agent's signature and signs with the real credential.

Env: LATCHKEY_ROUTE_URL (the route's https endpoint, maybe with a path
prefix), LATCHKEY_AGENT_TOKEN, LATCHKEY_CA_FILE. LATCHKEY_TEST_AWS_SECRET
replaces the throwaway secret, for pointing the script straight at a fake S3.

Uploads objects of three sizes under awkward keys, reads each back, and
prints one JSON line: ok, the keys checked, the mismatches, botocore's
version, the x-amz-content-sha256 values botocore sent (modes, in order) and
the same paired with their operations (requests). Exits 1 on a mismatch, 2
(the error on stderr) on any exception."""
import io
import json
import os
import sys

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

BUCKET = "lk-test"
KEYS = ["plain.txt", "with space.txt", "plus+sign", "per%cent", "unicodé/ключ.bin", "double//slash", "/leading"]
MB = 1024 * 1024


def main():
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["LATCHKEY_ROUTE_URL"],
        aws_access_key_id=os.environ["LATCHKEY_AGENT_TOKEN"],
        aws_secret_access_key=os.environ.get("LATCHKEY_TEST_AWS_SECRET", "not-a-secret-the-broker-re-signs"),
        region_name="us-east-1",
        verify=os.environ["LATCHKEY_CA_FILE"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    modes, requests = [], []

    def record(request, event_name, **_):
        value = request.headers.get("x-amz-content-sha256")
        if isinstance(value, bytes):
            value = value.decode()
        modes.append(value)
        requests.append([event_name.rsplit(".", 1)[-1], value])

    client.meta.events.register("before-send.s3", record)

    client.create_bucket(Bucket=BUCKET)
    # Three kinds of upload, in turn over the keys: a few bytes, ~5 MB in one
    # PutObject, and ~17 MB through upload_fileobj in 8 MB parts (multipart).
    transfer = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB)
    expected = {}
    for i, key in enumerate(KEYS):
        kind = i % 3
        if kind == 0:
            data = f"small object {i}: {key}\n".encode()
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
        elif kind == 1:
            data = os.urandom(5 * MB + 123)
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
        else:
            data = os.urandom(17 * MB + 4567)
            client.upload_fileobj(io.BytesIO(data), BUCKET, key, Config=transfer)
        expected[key] = data

    checked, mismatches = [], []
    for key, data in expected.items():
        got = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        checked.append(key)
        if got != data:
            mismatches.append({"key": key, "sent": len(data), "got": len(got), "got_head": got[:40].hex()})

    print(
        json.dumps(
            {
                "ok": not mismatches,
                "checked": checked,
                "mismatches": mismatches,
                "botocore": botocore.__version__,
                "modes": modes,
                "requests": requests,
            }
        )
    )
    return 0 if not mismatches else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - any failure is the test's failure
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
