"""`tencent-tc3` against Tencent Cloud's official Python SDK.

Each case is a random request (fixed seed) signed twice at a fixed time: by
`tencentcloud-sdk-python-common` and by `latchkey sign --scheme tencent-tc3`.
The `authorization` header (and `x-tc-timestamp`, `x-tc-token`) must be equal
byte for byte. Two ways of driving the SDK alternate:

- the client: `CommonClient._build_req_with_tc3_signature` builds and signs a
  whole request from an action and parameters, exactly as `call_json` does,
  with the clock fixed; latchkey then signs the request the SDK built;
- the signer: `AbstractClient._get_tc3_signature`, the SDK's canonicalisation
  and HMAC chain, over hand-made requests with odd paths, raw query strings
  (repeated, empty and valueless names, `+`, `%2F`, UTF-8 escapes), content
  types with inner runs of spaces, and empty or binary bodies.

The SDK signs `content-type;host`, which is the scheme's default.

Run: pip install -r tests/sdk/requirements-tencent-tc3.txt; cargo build -p latchkey;
pytest tests/sdk/test_tencent_tc3.py (LATCHKEY_BIN overrides the binary).
"""

import json
import os
import random
import string
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import pytest

abstract_client = pytest.importorskip("tencentcloud.common.abstract_client")
from tencentcloud.common.common_client import CommonClient  # noqa: E402
from tencentcloud.common.credential import Credential  # noqa: E402
from tencentcloud.common.http.request import RequestInternal  # noqa: E402
from tencentcloud.common.profile.client_profile import ClientProfile  # noqa: E402
from tencentcloud.common.profile.http_profile import HttpProfile  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LATCHKEY = Path(os.environ.get("LATCHKEY_BIN", REPO / "target" / "debug" / "latchkey"))
SEED = 1551113065
CASES = 240
ALGORITHM = "TC3-HMAC-SHA256"

SERVICES = ["cvm", "cbs", "tmt", "hunyuan", "sms", "vpc"]
REGIONS = ["ap-guangzhou", "ap-beijing", "na-siliconvalley"]
SEGMENTS = ["", "v1", "api", "a%20b", "a+b", "a%2Fb", ".", "..", "%E4%B8%AD", "%C3%BC", "~x", "x-y_z.w"]
QUERY_NAMES = ["Limit", "Offset", "InstanceIds.0", "Filters.0.Name", "a", "b", "", "x%20y", "%E4%B8%AD"]
QUERY_VALUES = ["", "0", "10", "a+b", "a%20b", "a%2Fb", "%E4%B8%AD%E6%96%87", "~-._", "%2B", "%2a", "ins-09dx96dg"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json;  charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "multipart/form-data; boundary=abc",
]
PARAM_VALUES = ["unnamed", "未命名", "a b", "a+b", "x/y", "~*'()", "", "100%", "tab\tin"]


def rand_text(rng, alphabet, low, high):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def credentials(rng):
    secrets = {
        "secret_id": "AKID" + rand_text(rng, string.ascii_letters + string.digits, 32, 32),
        "secret_key": rand_text(rng, string.ascii_letters + string.digits, 32, 32),
    }
    if rng.random() < 0.3:
        secrets["token"] = rand_text(rng, string.ascii_letters + string.digits + "_-", 40, 120)
    return secrets


def random_params(rng):
    params = {}
    if rng.random() < 0.7:
        params["Limit"] = rng.randint(1, 100)
    if rng.random() < 0.5:
        params["Offset"] = rng.randint(0, 100)
    if rng.random() < 0.5:
        params["InstanceIds"] = [f"ins-{rand_text(rng, string.ascii_lowercase + string.digits, 8, 8)}"
                                 for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.6:
        params["Filters"] = [{"Name": "instance-name",
                              "Values": [rng.choice(PARAM_VALUES) for _ in range(rng.randint(1, 2))]}]
    if rng.random() < 0.3:
        params["Text"] = rng.choice(PARAM_VALUES) * rng.randint(1, 3)
    return params


def client_case(rng, index, ts):
    """A request built and signed by the SDK client."""
    service = rng.choice(SERVICES)
    region = rng.choice(REGIONS)
    endpoint = f"{service}.tencentcloudapi.com" if rng.random() < 0.7 else f"{service}.{region}.tencentcloudapi.com"
    method = rng.choice(["GET", "POST"])
    secrets = credentials(rng)
    action = rng.choice(["DescribeInstances", "TextTranslate", "SendSms", "ChatCompletions"])
    params = random_params(rng)

    profile = ClientProfile(httpProfile=HttpProfile(endpoint=endpoint, reqMethod=method))
    client = CommonClient(service, "2017-03-12", Credential(secrets["secret_id"], secrets["secret_key"],
                                                             secrets.get("token")), region, profile)
    req = RequestInternal(endpoint, method, "/")
    with mock.patch.object(abstract_client.time, "time", return_value=ts):
        client._build_req_with_tc3_signature(action, params, req)

    query = req.data if method == "GET" else ""
    body = b"" if method == "GET" else req.data.encode("utf-8")
    headers = [(k, v) for k, v in req.header.items() if k not in ("Host", "Authorization")]
    return {
        "id": f"{index:03d}-client-{method}",
        "method": method,
        "url": f"https://{endpoint}/" + (f"?{query}" if query else ""),
        "headers": headers,
        "body": body,
        "secrets": secrets,
        "config": {},
        "ts": ts,
        "authorization": req.header["Authorization"],
    }


def signer_case(rng, index, ts):
    """A hand-made request signed by the SDK's TC3 signer."""
    service = rng.choice(SERVICES)
    custom_host = rng.random() < 0.2
    host = "127.0.0.1:8443" if custom_host else f"{service}.tencentcloudapi.com"
    method = rng.choices(["GET", "POST", "PUT", "DELETE"], [5, 4, 1, 1])[0]
    secrets = credentials(rng)
    path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, 3)))

    query = ""
    if method == "GET" and rng.random() < 0.85:
        pieces = []
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(QUERY_NAMES)
            kind = rng.randrange(4)
            pieces.append(name if kind == 0 else f"{name}={rng.choice(QUERY_VALUES)}")
            if rng.random() < 0.15:
                pieces.append("")  # an empty segment: `a=1&&b=2`
        query = "&".join(pieces)
    body = b""
    if method != "GET":
        kind = rng.randrange(3)
        if kind == 1:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 96)))
        elif kind == 2:
            body = json.dumps(random_params(rng), ensure_ascii=rng.random() < 0.5).encode("utf-8")
    content_type = rng.choice(CONTENT_TYPES)

    req = RequestInternal(host, method, path, header={"Content-Type": content_type, "Host": host,
                                                     "X-TC-Timestamp": str(ts)},
                          data=query if method == "GET" else body)
    date = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")
    signer = CommonClient(service, "2017-03-12", Credential("unused", "unused"), "ap-guangzhou")
    signature = signer._get_tc3_signature(None, req, date, service, secrets["secret_key"])
    authorization = (f"{ALGORITHM} Credential={secrets['secret_id']}/{date}/{service}/tc3_request, "
                     f"SignedHeaders=content-type;host, Signature={signature}")

    # The caller's side: the same content type, sometimes padded (HTTP strips
    # that whitespace on the wire), and headers TC3 does not sign.
    pad = rng.choice(["", "", " ", "  \t"])
    headers = [("Content-Type", pad + content_type + pad),
               ("X-TC-Action", rng.choice(["DescribeInstances", "RunInstances"])),
               ("X-TC-Version", "2017-03-12")]
    if rng.random() < 0.5:
        headers.append(("X-TC-Region", rng.choice(REGIONS)))
    if rng.random() < 0.3:
        headers += [("X-Custom", "a  b"), ("x-custom", "c")]
    if rng.random() < 0.2:
        headers.append(("X-TC-Timestamp", "1"))  # replaced by the scheme
    rng.shuffle(headers)
    return {
        "id": f"{index:03d}-signer-{method}",
        "method": method,
        "url": f"https://{host}{path}" + (f"?{query}" if query else ""),
        "headers": headers,
        "body": body,
        "secrets": secrets,
        "config": {"service": service} if custom_host or rng.random() < 0.3 else {},
        "ts": ts,
        "authorization": authorization,
    }


def latchkey_sign(case, tmp_path):
    if not LATCHKEY.exists():
        pytest.skip(f"latchkey binary not found at {LATCHKEY}; run `cargo build -p latchkey` or set LATCHKEY_BIN")
    at = datetime.fromtimestamp(case["ts"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = [str(LATCHKEY), "sign", "--scheme", "tencent-tc3", "--at", at,
            "--method", case["method"], "--url", case["url"]]
    for field, value in case["config"].items():
        args += ["--config", f"{field}={value}"]
    for field, value in case["secrets"].items():
        args += ["--secret", f"{field}={value}"]
    for name, value in case["headers"]:
        args += ["-H", f"{name}: {value}"]
    if case["body"]:
        body_file = tmp_path / "body.bin"
        body_file.write_bytes(case["body"])
        args += ["--body-file", str(body_file)]
    done = subprocess.run(args, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def header(signed, name):
    values = [v for n, v in signed["headers"] if n.lower() == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def _cases():
    rng = random.Random(SEED)
    cases = []
    for i in range(CASES):
        ts = 1_500_000_000 + rng.randrange(0, 400_000_000)
        cases.append(client_case(rng, i, ts) if i % 2 == 0 else signer_case(rng, i, ts))
    return cases


_CASES = _cases()


@pytest.mark.parametrize("case", _CASES, ids=[c["id"] for c in _CASES])
def test_matches_official_sdk(case, tmp_path):
    signed = latchkey_sign(case, tmp_path)
    assert header(signed, "authorization") == case["authorization"]
    assert header(signed, "x-tc-timestamp") == str(case["ts"])
    if "token" in case["secrets"]:
        assert header(signed, "x-tc-token") == case["secrets"]["token"]
    assert signed["url"] == case["url"]


def test_sdk_reproduces_the_documented_example():
    """The comparison is only as good as the SDK call: pin it to the
    documentation's worked example (the English "Signature v3", whose step 3
    prints the example SecretKey) first."""
    body = '{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    req = RequestInternal("cvm.tencentcloudapi.com", "POST", "/",
                          header={"Content-Type": "application/json; charset=utf-8",
                                  "Host": "cvm.tencentcloudapi.com", "X-TC-Timestamp": "1551113065"},
                          data=body)
    signer = CommonClient("cvm", "2017-03-12", Credential("unused", "unused"), "ap-guangzhou")
    signature = signer._get_tc3_signature(None, req, "2019-02-25", "cvm", "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE")
    assert signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
