#!/usr/bin/env bash
# What bbr-extproc and the Go routers answer, through the same Envoy, to
# the bodies where routers differ; prints a Markdown table (the one in
# docs/extproc.md). Each cell: the status the client got, then either the
# pool that answered and the X-Gateway-Model-Name it saw (`-`: none; `≠`
# when the body reached it changed), or `Envoy: no route` (Envoy's own 404
# for a request no route matched), or `ext_proc:` and what the ext_proc
# server answered (bbr's error code, the model list's ids, or the start of
# the body; `empty` when Envoy answered for a server that ended the
# stream).
#
# Envoy routes X-Gateway-Model-Name `chatbot` to pool gemma3 and
# `recommender` to deepseek-r1 and answers anything else with 404
# (examples/envoy/); for Envoy AI Gateway's server (aigw, BUFFERED only)
# the header is its x-ai-eg-model (benches/load/envoy-aigw.yaml), which the
# spoofed cases send instead.
#
# Environment: SERVERS (default "bbr go-v1.5 go-v0.5 ipp aigw"), BODY_MODES
# ("full-duplex buffered"; ipp is full duplex only, aigw buffered only),
# BBR_TLS (true), BBR_ENVOY.
set -euo pipefail
cd "$(dirname "$0")/../.."

SERVERS=${SERVERS:-"bbr go-v1.5 go-v0.5 ipp aigw"}
BODY_MODES=${BODY_MODES:-"full-duplex buffered"}
CASES="duplicate spoofed spoofed-no-model invalid no-model non-string escaped-key empty gzip split-70k models"

. benches/load/lib.sh
# shellcheck disable=SC2086
build_servers $SERVERS
start_pools

# Sends case $2 through Envoy on port $1, spoofing header $3; prints one
# cell.
ask() { # port case header
  python3 - "$1" "$2" "$3" <<'PY'
import gzip, hashlib, http.client, json, sys, time
port, case, spoof = int(sys.argv[1]), sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json"}
chunks = None
body = {
    "duplicate": b'{"model":"chatbot","messages":[{"role":"user","content":"hi"}],"model":"recommender"}',
    "spoofed": b'{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}',
    "spoofed-no-model": b'{"messages":[{"role":"user","content":"hi"}]}',
    "invalid": b'{"model":"chatbot","messages":[{"role":"user","content":"hi"}',
    "no-model": b'{"messages":[{"role":"user","content":"hi"}]}',
    "non-string": b'{"model":42,"messages":[{"role":"user","content":"hi"}]}',
    "escaped-key": b'{"mod\\u0065l":"chatbot","messages":[{"role":"user","content":"hi"}]}',
    "empty": b"",
    "gzip": gzip.compress(b'{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}'),
}.get(case)
if case.startswith("spoofed"):
    headers[spoof] = "recommender"
if case == "gzip":
    headers["Content-Encoding"] = "gzip"
if case == "split-70k":
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 70000}],
                       "model": "chatbot"}, separators=(",", ":")).encode()
    # Sent in pieces, paced, so that Envoy passes it on in several messages.
    chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
if chunks:
    c.putrequest("POST", "/v1/chat/completions")
    for k, v in headers.items():
        c.putheader(k, v)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for piece in chunks:
        c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.05)
    c.send(b"0\r\n\r\n")
elif case == "models":
    c.request("GET", "/v1/models")
else:
    c.request("POST", "/v1/chat/completions", body=body, headers=headers)
r = c.getresponse()
answer = r.read()
seen = r.getheader("x-pool-received-model-header") or "-"
pool = r.getheader("x-inference-pool")
if pool:
    cell = f"{r.status} {pool} {seen}"
    if r.getheader("x-pool-received-sha256") not in (None, hashlib.sha256(body).hexdigest()):
        cell += " ≠"
elif answer.startswith(b"no route for this model"):
    cell = f"{r.status} Envoy: no route"
else:
    try:
        doc = json.loads(answer)
        if doc.get("object") == "list":
            what = "list " + ",".join(m["id"] for m in doc["data"])
        else:
            # bbr's code; AI Gateway puts the status in `code`, its kind in `type`.
            error = doc["error"]
            what = error["type"] if str(error.get("code", "")).isdigit() else error["code"]
    except Exception:
        what = answer.decode("utf-8", "replace").strip().replace("|", "/")[:40].strip() or "empty"
    cell = f"{r.status} ext_proc: {what}"
print(cell)
PY
}

declare -A CELL
columns=()
for server in $SERVERS; do
  for body in $BODY_MODES; do
    [ "$server" = ipp ] && [ "$body" != full-duplex ] && continue
    [ "$server" = aigw ] && [ "$body" != buffered ] && continue
    column="$server $body"; columns+=("$column")
    name="behaviour-$server-$body"
    template=$(envoy_template "$body") spoof=X-Gateway-Model-Name
    [ "$server" = aigw ] && template=benches/load/envoy-aigw.yaml spoof=x-ai-eg-model
    start_server "$server" "$body" "$name"
    start_envoy "$template" "$SERVER_PORT" "$SERVER_TLS" "$name"
    for case in $CASES; do
      CELL[$column,$case]=$(ask "$ENVOY_PORT" "$case" "$spoof" || echo "client error")
    done
  done
done

printf '| case |'; for column in "${columns[@]}"; do printf ' %s |' "$column"; done; echo
printf '|---|'; for _ in "${columns[@]}"; do printf -- '---|'; done; echo
for case in $CASES; do
  printf '| %s |' "$case"
  for column in "${columns[@]}"; do printf ' %s |' "${CELL[$column,$case]}"; done
  echo
done
