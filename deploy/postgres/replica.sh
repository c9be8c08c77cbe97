#!/bin/bash
# compose.scale.yaml's db-replica: a hot standby of db. On its first start
# (an empty volume) it is made with pg_basebackup, through a replication slot
# on the primary so the primary keeps the WAL it has not received yet; after
# that it only starts, and catches up by streaming.
set -euo pipefail
: "${PRIMARY_HOST:=db}" "${REPLICATION_ROLE:=mp3_replication}" "${SLOT:=db_replica}"
export PGPASSWORD="$REPLICATION_PASSWORD"

if [ "$(id -u)" = 0 ]; then  # the image starts us as root: the data is the postgres user's
    mkdir -p "$PGDATA" && chown postgres "$PGDATA" && chmod 700 "$PGDATA"
    exec gosu postgres "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The role exists once the primary is up and migrate has run. The slot is made
    # over a replication connection: the role may connect to no database at all.
    until pg_receivewal -h "$PRIMARY_HOST" -U "$REPLICATION_ROLE" -S "$SLOT" --create-slot --if-not-exists \
        >/dev/null; do
        echo "waiting for the primary and its replication role" >&2
        sleep 2
    done
    pg_basebackup -h "$PRIMARY_HOST" -U "$REPLICATION_ROLE" -D "$PGDATA" -S "$SLOT" -R -X stream --checkpoint=fast
fi
# hot_standby_feedback: a long read here is not cancelled by the primary's vacuum.
exec postgres -c hot_standby=on -c hot_standby_feedback=on
