#!/bin/sh
# Creates the lab's database once, when its data directory is new: initdb, then init.sql run by
# the database superuser through a server that listens on a Unix socket only, then that server
# stopped. The kind runtime runs it in PostgreSQL's init container, the local runtime before it
# starts PostgreSQL: the same steps on both, with any image or package of the pinned major.
# The SPIRE servers' datastore is made by the same script, with its own database and SQL.
#   PGDATA           the data directory (required)
#   PG_INIT_SQL      the schema (default /etc/postgresql-init/init.sql)
#   PG_INIT_DATABASE the database it creates and runs the schema in (default demo)
#   PG_INIT_SOCKETS  where the temporary server's socket goes (default /tmp)
set -eu
: "${PGDATA:?PGDATA must name the data directory}"
sql="${PG_INIT_SQL:-/etc/postgresql-init/init.sql}"
db="${PG_INIT_DATABASE:-demo}"
sockets="${PG_INIT_SOCKETS:-/tmp}"
if [ -s "$PGDATA/PG_VERSION" ]; then
  echo "init-db: $PGDATA holds a database already"
  exit 0
fi
# Built beside, moved into place whole: an interrupted run leaves no half-made database.
partial="$PGDATA.partial"
rm -rf "$partial"
initdb -D "$partial" --auth=peer -E UTF8 --locale=C --no-sync > /dev/null
pg_ctl -D "$partial" -s -w -o "-c listen_addresses='' -c unix_socket_directories='$sockets'" start
psql -h "$sockets" -d postgres -v ON_ERROR_STOP=1 -Xq -c "CREATE DATABASE $db"
psql -h "$sockets" -d "$db" -v ON_ERROR_STOP=1 -Xq -f "$sql"
pg_ctl -D "$partial" -s -w -m fast stop
rmdir "$PGDATA" 2>/dev/null || true
mv "$partial" "$PGDATA"
echo "init-db: database $db created in $PGDATA"
