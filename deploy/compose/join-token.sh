#!/bin/sh
# Creates the one-time join token compute-2 uses (once the orchestrators have a leader), unless
# compute-2 has joined already or a token is waiting. Runs as the `join-token` service.
set -eu
if [ -s /shared/join.token ]; then
  echo "join-token: a token is already there"
  exit 0
fi
CARAVEL_API_KEY_FILE=/certs/operator.key caravel --api-host orch-1 --api-port 1234 \
  node token create --ttl 1h --node-id compute-2 --labels joined=token,node=compute-2 \
  --description "compose: compute-2" >/shared/join.token.tmp
mv /shared/join.token.tmp /shared/join.token
echo "join-token: token for compute-2 created"
