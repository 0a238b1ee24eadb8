"""The official Anthropic SDK pointed at a Latchkey route (the agent token as
its API key, sent in X-Api-Key). Prints one JSON line."""
import json
import os
import sys
import time

import anthropic

client = anthropic.Anthropic(base_url=os.environ["LATCHKEY_ROUTE_URL"], api_key=os.environ["LATCHKEY_AGENT_TOKEN"], max_retries=0)
mode = sys.argv[1]
if mode == "plain":
    m = client.messages.create(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"content": m.content[0].text}))
elif mode == "stream":
    start = time.monotonic()
    arrivals, parts = [], []
    with client.messages.stream(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as s:
        for text in s.text_stream:
            arrivals.append(time.monotonic() - start)
            parts.append(text)
    print(json.dumps({"content": "".join(parts), "arrivals": arrivals}))
