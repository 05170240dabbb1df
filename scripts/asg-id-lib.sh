# Shared by the asg-id VM scripts. POSIX sh + curl: what an EC2 image has.
# Configuration (environment, or /etc/asg-id/agent.env read by the systemd units):
#   ASG_ID_REGISTRY_URL   registry base URL (required), e.g. http://registry.internal:8080
#   ASG_ID_TOKEN          agent bearer token, when the registry has AGENT_TOKENS
#   ASG_ID_STATE_DIR      where identity.env is written (default /run/asg-id)
#   ASG_ID_CLIENT_ID      override the client id (default: IMDSv2 instance id, else hostname)
#   ASG_ID_IMDS_URL       instance metadata endpoint (default http://169.254.169.254; "off" to skip)
#   ASG_ID_TIMEOUT        seconds per HTTP request (default 5)

ASG_ID_STATE_DIR=${ASG_ID_STATE_DIR:-/run/asg-id}
ASG_ID_IDENTITY_FILE="$ASG_ID_STATE_DIR/identity.env"
ASG_ID_TIMEOUT=${ASG_ID_TIMEOUT:-5}

asg_log() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
}

asg_require_url() {
  if [ -z "${ASG_ID_REGISTRY_URL:-}" ]; then
    asg_log "ASG_ID_REGISTRY_URL is not set"
    exit 64
  fi
  ASG_ID_REGISTRY_URL=${ASG_ID_REGISTRY_URL%/}
}

# Monotonic time in centiseconds (Linux /proc/uptime), for measuring a TTL across clock steps.
asg_now_cs() {
  if [ -r /proc/uptime ]; then
    awk '{ printf "%d\n", $1 * 100 }' /proc/uptime
  else
    echo $(( $(date +%s) * 100 ))
  fi
}

# Centiseconds to seconds with two decimals, for sleep and curl --max-time.
asg_cs_to_s() {
  printf '%d.%02d\n' $(($1 / 100)) $(($1 % 100))
}

# Seconds (a decimal) to centiseconds.
asg_s_to_cs() {
  awk -v s="$1" 'BEGIN { printf "%d\n", s * 100 }'
}

# asg_post PATH JSON [TIMEOUT] -> prints the HTTP status ("000" when unreachable or timed out);
# the body is in $ASG_BODY_FILE.
asg_post() {
  set -- "$1" "$2" "${3:-$ASG_ID_TIMEOUT}"
  if [ -n "${ASG_ID_TOKEN:-}" ]; then
    curl -sS -o "$ASG_BODY_FILE" -w '%{http_code}' --max-time "$3" \
      -H 'Content-Type: application/json' -H "Authorization: Bearer $ASG_ID_TOKEN" \
      -d "$2" "$ASG_ID_REGISTRY_URL$1" 2>/dev/null || true
  else
    curl -sS -o "$ASG_BODY_FILE" -w '%{http_code}' --max-time "$3" \
      -H 'Content-Type: application/json' -d "$2" "$ASG_ID_REGISTRY_URL$1" 2>/dev/null || true
  fi
}

# asg_field NAME: a string or integer field of the flat JSON object in $ASG_BODY_FILE.
asg_field() {
  sed -n -e "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" -e "s/.*\"$1\":\\([0-9][0-9]*\\).*/\\1/p" "$ASG_BODY_FILE" | head -n 1
}

asg_error_code() {
  sed -n 's/.*"code":"\([a-z_]*\)".*/\1/p' "$ASG_BODY_FILE" | head -n 1
}

# Seconds from one ISO 8601 time to another, via GNU or busybox date; empty if date cannot parse them.
asg_seconds_between() {
  a=$(date -u -d "$1" +%s 2>/dev/null) || return 0
  b=$(date -u -d "$2" +%s 2>/dev/null) || return 0
  echo $(( b - a ))
}

asg_body_file() {
  ASG_BODY_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") || {
    asg_log "cannot create a temporary file in ${TMPDIR:-/tmp}"
    exit 70
  }
  trap 'rm -f "$ASG_BODY_FILE"' EXIT
}

asg_load_identity() {
  if [ ! -r "$ASG_ID_IDENTITY_FILE" ]; then
    asg_log "no identity at $ASG_ID_IDENTITY_FILE (run asg-id-claim first)"
    return 1
  fi
  # shellcheck disable=SC1090
  . "$ASG_ID_IDENTITY_FILE"
}

asg_json_lease() {
  printf '{"client_id":"%s","identifier":"%s","epoch":%s}' "$ASG_ID_CLIENT_ID" "$ASG_ID_IDENTIFIER" "$ASG_ID_EPOCH"
}

# Gives the identifier back; a 409 means it is not ours any more, which is what we wanted.
asg_release() {
  code=$(asg_post /release "$(asg_json_lease)")
  case "$code" in
    200) asg_log "released $ASG_ID_IDENTIFIER (epoch $ASG_ID_EPOCH)"; return 0 ;;
    404|409) asg_log "$ASG_ID_IDENTIFIER was no longer ours ($(asg_error_code))"; return 0 ;;
    *) asg_log "release of $ASG_ID_IDENTIFIER failed (HTTP $code); the reaper will reclaim it"; return 1 ;;
  esac
}
