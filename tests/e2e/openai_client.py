"""The official OpenAI SDK pointed at a Latchkey route: the agent token is
the SDK's API key and the route is its base URL. Prints one JSON line."""
import json
import os
import sys
import time

import openai

client = openai.OpenAI(base_url=os.environ["LATCHKEY_ROUTE_URL"] + "/v1", api_key=os.environ["LATCHKEY_AGENT_TOKEN"], max_retries=0)
mode = sys.argv[1]
if mode == "plain":
    r = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"content": r.choices[0].message.content}))
elif mode == "stream":
    start = time.monotonic()
    arrivals, parts = [], []
    for chunk in client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            parts.append(chunk.choices[0].delta.content)
    print(json.dumps({"content": "".join(parts), "arrivals": arrivals}))
elif mode == "error":
    try:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        print(json.dumps({"status": 200}))
    except openai.APIStatusError as e:
        print(json.dumps({"status": e.status_code, "body": e.response.json()}))
