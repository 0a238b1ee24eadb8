"""boto3 through a SigV4 route: the agent token is the access key id (the
broker discards the agent's signature and signs with the real credential).
Prints one JSON line."""
import json
import os

import boto3
from botocore.config import Config

client = boto3.client(
    "dynamodb",
    endpoint_url=os.environ["LATCHKEY_ROUTE_URL"],
    aws_access_key_id=os.environ["LATCHKEY_AGENT_TOKEN"],
    aws_secret_access_key="not-a-secret-the-broker-re-signs",
    region_name="us-east-1",
    config=Config(retries={"max_attempts": 1}),
)
r = client.list_tables()
print(json.dumps({"tables": r["TableNames"]}))
