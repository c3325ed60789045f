#!/bin/bash
# floq-healthcheck: the image's HEALTHCHECK. Asks this container's floq service
# for GET /healthz over bash's /dev/tcp (the image has no curl) and succeeds on 200.
#
# Which address: FLOQ_HEALTH_ADDR (host:port) when set; otherwise the listener of
# the floq binary running in the container: floq-worker FLOQ_WORKER_HTTP_ADDR
# (default 127.0.0.1:8081), floq-scheduler FLOQ_SCHEDULER_HTTP_ADDR (:8082), else
# floq-api's internal listener FLOQ_API_METRICS_ADDR (:8083). A wildcard host
# (0.0.0.0, [::]) is asked on loopback. Orchestrators that probe over HTTP
# themselves (Kubernetes) ignore this and probe /healthz and /readyz directly.
set -u

addr=${FLOQ_HEALTH_ADDR:-}
if [[ -z $addr ]]; then
  service=floq-api
  for comm in /proc/[0-9]*/comm; do
    read -r name <"$comm" 2>/dev/null || continue
    case $name in
    floq-worker | floq-scheduler)
      service=$name
      break
      ;;
    esac
  done
  case $service in
  floq-worker) addr=${FLOQ_WORKER_HTTP_ADDR:-127.0.0.1:8081} ;;
  floq-scheduler) addr=${FLOQ_SCHEDULER_HTTP_ADDR:-127.0.0.1:8082} ;;
  *) addr=${FLOQ_API_METRICS_ADDR:-127.0.0.1:8083} ;;
  esac
fi

port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
case $host in
'' | 0.0.0.0) host=127.0.0.1 ;;
::) host=::1 ;;
esac

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
  echo "floq-healthcheck: cannot connect to $host:$port" >&2
  exit 1
fi
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
if [[ $status == "HTTP/1."[01]" 200"* ]]; then
  exit 0
fi
echo "floq-healthcheck: $host:$port/healthz answered '${status%$'\r'}'" >&2
exit 1
