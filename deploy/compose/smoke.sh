#!/usr/bin/env bash
# The compose cluster tried as an operator would, on this machine's Docker engine (CI runs it from
# scripts/test.sh):
#
#   1. build the images (build.sh) and bring the cluster up from a private copy of deploy/
#   2. run a job through each orchestrator's API (host ports 1234, 1235, 1236)
#   3. `docker stop` the leader, run another job, see CaravelOrchestratorDown fire in Prometheus,
#      start it again, see the alert clear
#   4. cut a compute container off its network for 30 s while it runs a job, reconnect it: the job
#      completes, once
#   5. restart every orchestrator in turn (followers first, the leader last: the rolling-upgrade
#      procedure) while a client keeps submitting; every acknowledged job completes exactly once
#   6. every node's /metrics scraped through Prometheus (all targets up, one leader)
#   7. tear down with nothing left behind (containers, networks, volumes)
#
#   deploy/compose/smoke.sh [--binary PATH] [--keep]
#     --binary   the caravel binary for the image and the host-side CLI (default: build release)
#     --keep     leave the cluster running at the end (for a look around; tear down by hand)
# Prints each step with its duration; exits non-zero at the first thing that is not as it should be.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
t0=$started
step() {
  local now; now=$(date +%s)
  printf '\n[%4ss] ==> %s\n' "$((now - started))" "$*" >&2
  t0=$now
}
ok() { printf '         ok: %s (%ss)\n' "$*" "$(($(date +%s) - t0))" >&2; }
die() { printf '\nSMOKE TEST FAILED: %s\n' "$*" >&2; exit 1; }

if command -v docker-compose >/dev/null 2>&1; then DC=(docker-compose); else DC=(docker compose); fi
project=caravel-smoke
work="$(mktemp -d /tmp/caravel-smoke.XXXXXX)"
# A private copy: the smoke test never touches deploy/compose/secrets of this checkout.
mkdir -p "$work/deploy"
cp -r "$here" "$work/deploy/compose"
cp -r "$repo/deploy/prometheus" "$work/deploy/prometheus"
rm -f "$work/deploy/compose/secrets/operator.key"
compose() { CARAVEL_COMPOSE_DATA="$work/data" "${DC[@]}" -p "$project" -f "$work/deploy/compose/compose.yaml" "$@"; }

teardown() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  # compute-3's data dir is a bind mount written as root by its container.
  rm -rf "$work"
}
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "--- last logs of the cluster ---" >&2
    compose logs --no-color --tail 40 2>/dev/null | tail -200 >&2 || true
  fi
  if [ "$keep" = 1 ] && [ "$rc" = 0 ]; then
    echo "cluster kept: CARAVEL_COMPOSE_DATA=$work/data ${DC[*]} -p $project -f $work/deploy/compose/compose.yaml down -v" >&2
  else
    teardown
  fi
}
trap on_exit EXIT

json() { python3 -c "import sys, json; d = json.load(sys.stdin); print($1)"; }

# ---------------------------------------------------------------------------------------------
step "images (build.sh) and the test payloads"
if [ -z "$binary" ]; then
  "$here/build.sh"
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/caravel"
else
  "$here/build.sh" --binary "$binary"
fi
"$repo/scripts/test-image.sh" >/dev/null 2>&1
modules="$repo/examples/test-modules/target/wasm32-wasip1/release"
(cd "$repo" && env -u CARGO_TARGET_DIR -u RUSTFLAGS cargo build --release --quiet --target wasm32-wasip1 \
  --manifest-path examples/test-modules/Cargo.toml --target-dir examples/test-modules/target)
for m in echo sleep; do [ -f "$modules/$m.wasm" ] || die "test module $m.wasm was not built"; done
ok "caravel:latest, caravel-prometheus:latest, caravel-busybox:latest, echo.wasm, sleep.wasm"

key="$work/deploy/compose/secrets/operator.key"
cli() { local port="$1"; shift; CARAVEL_API_KEY_FILE="$key" "$binary" --api-host 127.0.0.1 --api-port "$port" "$@"; }
PORTS=(1234 1235 1236)
port_of() { case "$1" in orch-1) echo 1234 ;; orch-2) echo 1235 ;; orch-3) echo 1236 ;; esac; }

# Waits until `$1` (a shell condition) holds, at most $2 seconds; $3 says what for.
wait_for() {
  local cond="$1" limit="$2" what="$3" deadline=$(( $(date +%s) + $2 ))
  until eval "$cond"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what: not within ${limit}s"
    sleep 1
  done
}

leader() {
  local p
  for p in "${PORTS[@]}"; do
    cli "$p" cluster status --output json 2>/dev/null | json 'd["Leader"]' 2>/dev/null && return 0
  done
  return 1
}
connected_nodes() { cli "${1:-1234}" node list --output json 2>/dev/null | json 'sum(1 for n in d["Nodes"] if n["ConnectionState"]["Status"] == "CONNECTED")' 2>/dev/null || echo 0; }
job_state() { cli "$1" job describe "$2" --output json 2>/dev/null | json 'd["Job"]["State"]["StateType"]' 2>/dev/null || echo unknown; }
# How many executions of job $2 completed (compute state 9) and how many there are.
completed_executions() { cli "$1" job describe "$2" --output json | json 'sum(1 for e in d["Executions"]["Items"] if e["ComputeState"]["StateType"] == 9)'; }
alert_state() {  # firing, pending or none, for alert $1
  curl -s "http://127.0.0.1:9090/api/v1/alerts" | python3 -c "
import sys, json
alerts = [a for a in json.load(sys.stdin)['data']['alerts'] if a['labels'].get('alertname') == '$1']
print(alerts[0]['state'] if alerts else 'none')" 2>/dev/null || echo none
}

# ---------------------------------------------------------------------------------------------
step "up: ${DC[*]} -p $project up -d"
compose up -d >/dev/null 2>&1 || { compose up -d; die "compose up failed"; }
wait_for '[ -s "$key" ]' 60 "the operator key written by init"
[ "$(stat -c %a "$key")" = 600 ] || die "the operator key is not mode 0600"
wait_for 'leader >/dev/null' 120 "a leader"
wait_for '[ "$(connected_nodes)" = 3 ]' 120 "three compute nodes connected"
cli 1234 node list
cli 1234 node list --output json | json '[n["Info"]["NodeID"] for n in d["Nodes"] if n["Info"]["Labels"].get("joined") == "token"]' | grep -q compute-2 \
  || die "compute-2 did not join by token"
ok "3 orchestrators (leader $(leader)), 3 compute nodes, compute-2 joined by token"

# ---------------------------------------------------------------------------------------------
step "a job through each orchestrator's API"
for p in "${PORTS[@]}"; do
  id=$(cli "$p" wasm run "$modules/echo.wasm" --name "smoke-api-$p" --id-only) || die "submit through :$p"
  wait_for '[ "$(job_state "$p" "$id")" = Completed ]' 60 "job $id through :$p"
  echo "         :$p  $id Completed" >&2
done
id=$(cli 1234 docker run --constraints node=compute-3 --id-only caravel-busybox:latest -- echo docker-through-the-host) \
  || die "docker job"
wait_for '[ "$(job_state 1234 "$id")" = Completed ]' 60 "docker job $id on compute-3"
cli 1234 job logs "$id" | grep -q docker-through-the-host || die "docker job output"
ok "a wasm job through each API, a docker job on compute-3"

# ---------------------------------------------------------------------------------------------
step "docker stop the leader, run a job, CaravelOrchestratorDown fires and clears"
old=$(leader)
docker stop "$old" >/dev/null
survivor=1234; [ "$old" = orch-1 ] && survivor=1235
wait_for 'l=$(leader) && [ "$l" != "$old" ]' 60 "a new leader after stopping $old"
id=$(cli "$survivor" wasm run "$modules/echo.wasm" --name smoke-after-leader --id-only) || die "submit after the leader stopped"
wait_for '[ "$(job_state "$survivor" "$id")" = Completed ]' 60 "job $id after the leader stopped"
echo "         stopped $old; new leader $(leader); $id Completed" >&2
wait_for '[ "$(alert_state CaravelOrchestratorDown)" = firing ]' 120 "CaravelOrchestratorDown firing"
echo "         CaravelOrchestratorDown: firing" >&2
docker start "$old" >/dev/null
wait_for '[ "$(alert_state CaravelOrchestratorDown)" = none ]' 120 "CaravelOrchestratorDown cleared"
ok "$old stopped and back; the alert fired and cleared"

# ---------------------------------------------------------------------------------------------
step "compute-1 cut off its network for 30 s while it runs a job"
net="${project}_caravel"
id=$(cli 1234 wasm run "$modules/sleep.wasm" --constraints node=compute-1 --name smoke-cut --id-only --wait=false -- 40) \
  || die "submit the sleep job"
wait_for '[ "$(job_state 1234 "$id")" = Running ]' 60 "the sleep job running on compute-1"
docker network disconnect "$net" compute-1
sleep 30
docker network connect "$net" compute-1
wait_for '[ "$(job_state 1234 "$id")" = Completed ]' 120 "the sleep job completing after the cut"
[ "$(completed_executions 1234 "$id")" = 1 ] || die "the cut job completed $(completed_executions 1234 "$id") times"
wait_for '[ "$(connected_nodes)" = 3 ]' 60 "compute-1 back"
ok "job $id completed once; compute-1 reconnected"

# ---------------------------------------------------------------------------------------------
step "rolling restart of every orchestrator (followers first, leader last) under a client's load"
acked="$work/acked"
: >"$acked"
(
  i=0
  while [ ! -e "$work/stop-client" ]; do
    p=${PORTS[$((i % 3))]}
    if id=$(cli "$p" wasm run "$modules/echo.wasm" --name "roll-$i" --id-only --wait=false 2>/dev/null); then
      echo "$id" >>"$acked"
    fi
    i=$((i + 1))
    sleep 0.2
  done
) &
client=$!
lead=$(leader)
order=()
for n in orch-1 orch-2 orch-3; do [ "$n" = "$lead" ] || order+=("$n"); done
order+=("$lead")
for n in "${order[@]}"; do
  docker restart -t 20 "$n" >/dev/null
  wait_for "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $n)\" = healthy ]" 120 "$n healthy after its restart"
  wait_for 'leader >/dev/null' 60 "a leader after restarting $n"
  echo "         restarted $n; leader $(leader)" >&2
done
sleep 3
touch "$work/stop-client"
wait "$client" || true
total=$(wc -l <"$acked")
[ "$total" -gt 10 ] || die "the client had only $total submissions acknowledged"
bad=0
while read -r id; do
  for _ in $(seq 1 120); do
    s=$(job_state 1234 "$id")
    case "$s" in Completed|Failed|Stopped) break ;; esac
    sleep 1
  done
  if [ "$s" != Completed ] || [ "$(completed_executions 1234 "$id")" != 1 ]; then
    echo "         $id: $s with $(completed_executions 1234 "$id") completed executions" >&2
    bad=$((bad + 1))
  fi
done <"$acked"
[ "$bad" = 0 ] || die "$bad of $total acknowledged jobs did not complete exactly once"
ok "restarted ${order[*]}; $total acknowledged jobs, each completed exactly once"

# ---------------------------------------------------------------------------------------------
step "every node's /metrics through Prometheus"
prom() { curl -s --get "http://127.0.0.1:9090/api/v1/query" --data-urlencode "query=$1" | json "$2"; }
wait_for '[ "$(prom "sum(up)" "d[\"data\"][\"result\"][0][\"value\"][1]" 2>/dev/null)" = 6 ]' 60 "six targets up"
# Just after the rolling restart a node may still be moving its session (and Prometheus scrapes
# every few seconds): wait for the gauges to settle rather than read them once.
wait_for '[ "$(prom "sum(caravel_raft_is_leader)" "d[\"data\"][\"result\"][0][\"value\"][1]" 2>/dev/null)" = 1 ]' 60 "exactly one leader in the metrics"
wait_for '[ "$(prom "count(caravel_session_connected == 1)" "d[\"data\"][\"result\"][0][\"value\"][1]" 2>/dev/null)" = 3 ]' 60 "compute nodes' session gauge at 3"
ok "6 targets up, one leader, 3 compute sessions"

# ---------------------------------------------------------------------------------------------
if [ "$keep" = 1 ]; then
  step "kept running (--keep)"
  exit 0
fi
step "down -v: nothing left behind"
compose down -v --remove-orphans >/dev/null 2>&1
label="label=com.docker.compose.project=$project"
[ -z "$(docker ps -aq --filter "$label")" ] || die "containers left behind"
[ -z "$(docker network ls -q --filter "$label")" ] || die "networks left behind"
[ -z "$(docker volume ls -q --filter "$label")" ] || die "volumes left behind"
[ -z "$(docker ps -aq --filter label=caravel.node-id=compute-3)" ] || die "job containers left behind"
ok "no containers, networks or volumes of $project remain"
printf '\nsmoke test passed in %ss\n' "$(($(date +%s) - started))" >&2
