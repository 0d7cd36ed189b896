# Shared by the load scripts (load.sh, deflate_load.sh, echo.sh,
# cluster_load.sh): how a server or generator is started pinned in a session
# of its own, and how the one server of a run is stopped. Source it after
# setting NICE (autogroup nice, 0 = leave priorities alone).
#
# Why a session of its own: with scheduler autogroups, a busy server on core
# 0 would otherwise leave its group almost no weight on core 1 and starve the
# generator; each process in its own session gets its own autogroup.

# own PIDFILE CORE CMD...: runs CMD in a new session (its own autogroup) at
# autogroup nice $NICE, pinned to CORE; writes CMD's pid to PIDFILE (setsid
# may fork: the pid of the bash that execs CMD is CMD's).
own() {
    local pidfile=$1 core=$2
    shift 2
    setsid -w bash -c 'echo $$ >"$1"
        [ "$0" = 0 ] || echo "$0" >/proc/self/autogroup 2>/dev/null || true
        exec nice -n "$0" taskset -c "$2" "${@:3}"' "${NICE:-0}" "$pidfile" "$core" "$@"
}

# wait_port PORT: returns once something accepts on 127.0.0.1:PORT (10 s at
# most, then exits the script).
wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "$(basename "$0"): nothing listens on port $1" >&2
    exit 1
}

# The run's one server: PID (the process) and JOB (the background job
# running `own`), set by start_owned, cleared by stop_server.
PID=""
JOB=""

# start_owned PIDFILE ERRLOG CMD...: CMD as a server on core 0 (stderr
# appended to ERRLOG); sets PID and JOB. Waiting for it to listen is the
# caller's (wait_port, or a log line).
start_owned() {
    local pidfile=$1 errlog=$2
    shift 2
    rm -f "$pidfile"
    own "$pidfile" 0 "$@" 2>>"$errlog" &
    JOB=$!
    for _ in $(seq 200); do
        [ -s "$pidfile" ] && break
        sleep 0.02
    done
    PID=$(cat "$pidfile" 2>/dev/null || true)
}

stop_server() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$JOB" 2>/dev/null || true
        PID=""
    fi
}
trap stop_server EXIT
