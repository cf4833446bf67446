#!/bin/sh
# First start of the compose cluster (run by the `init` service, as root, in the caravel image):
# the cluster CA, a certificate per node (orchestrators and the compute nodes that do not join by
# token), the operator's admin API key and Prometheus's read:metrics key. Idempotent: what exists is
# kept, so `docker-compose up` again changes nothing.
#
#   /certs         (volume, uid 10001)  what the Caravel containers read
#   /prom-secrets  (volume, uid 65534)  Prometheus's key
#   /secrets       (deploy/compose/secrets on the host)  operator.key for the person running compose,
#                  owned like that directory, mode 0600
set -eu
umask 077

newkey() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

[ -f /certs/ca.crt ] || caravel cert ca --out-dir /certs --cluster compose
for n in orch-1 orch-2 orch-3; do
  [ -f "/certs/$n.crt" ] || caravel cert issue --ca-dir /certs --node-id "$n" --role orchestrator --out-dir /certs
done
for n in compute-1 compute-3; do   # compute-2 joins with a one-time token (the join-token service)
  [ -f "/certs/$n.crt" ] || caravel cert issue --ca-dir /certs --node-id "$n" --role compute --out-dir /certs
done

if [ ! -s /secrets/operator.key ]; then
  newkey >/secrets/operator.key
  echo "init: generated the operator's API key in deploy/compose/secrets/operator.key"
fi
[ -s /certs/prometheus.key ] || newkey >/certs/prometheus.key
cp /secrets/operator.key /certs/operator.key
cp /certs/prometheus.key /prom-secrets/prometheus.key

# The person who ran compose reads their key; the containers read theirs.
owner="$(stat -c %u:%g /secrets)"
chown "$owner" /secrets/operator.key
chmod 0600 /secrets/operator.key
chown -R 10001:10001 /certs
chmod 0400 /certs/*.key
chmod 0444 /certs/*.crt
chown 65534:65534 /prom-secrets/prometheus.key
chmod 0400 /prom-secrets/prometheus.key
echo "init: certificates and keys are ready"
