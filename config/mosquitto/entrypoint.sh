#!/bin/sh
# Entrypoint of the `mosquitto` compose service (eclipse-mosquitto 2.0 image, busybox sh).
#
# Accounts and topic ACLs (issue 7) come from the OCC store: the `broker-auth` service renders
# /mosquitto/auth/passwd and /mosquitto/auth/acl into the shared `mosquitto-auth` volume and sends this broker
# SIGHUP (it shares our pid namespace) whenever they change. Until it has written them, both files are empty
# and nobody can connect. No password file is ever committed, and none is written into the read-only bind
# mount of config/mosquitto/.
#
# TLS: when /mosquitto/certs holds ca.pem, server.pem and server.key (`occ tls DIR --host NAME` makes them), a
# TLS listener on 8883 is added (conf.d/tls.conf, included by mosquitto.conf).
set -eu

auth_dir=/mosquitto/auth
certs=/mosquitto/certs

umask 077
mkdir -p "$auth_dir/conf.d" /mosquitto/data
for file in passwd acl; do
    [ -e "$auth_dir/$file" ] || : > "$auth_dir/$file"
done
if [ -f "$certs/server.pem" ] && [ -f "$certs/server.key" ] && [ -f "$certs/ca.pem" ]; then
    # Copied next to the auth files: Mosquitto loads them after dropping root, and the mounted key is 0600 root.
    mkdir -p "$auth_dir/tls"
    cp "$certs/ca.pem" "$certs/server.pem" "$certs/server.key" "$auth_dir/tls/"
    printf 'listener 8883\nprotocol mqtt\ncafile %s/ca.pem\ncertfile %s/server.pem\nkeyfile %s/server.key\ntls_version tlsv1.2\n' \
        "$auth_dir/tls" "$auth_dir/tls" "$auth_dir/tls" > "$auth_dir/conf.d/tls.conf"
else
    rm -f "$auth_dir/conf.d/tls.conf"
fi

if [ "$(id -u)" = 0 ]; then
    chown -R mosquitto:mosquitto "$auth_dir" /mosquitto/data
fi

exec "$@"
