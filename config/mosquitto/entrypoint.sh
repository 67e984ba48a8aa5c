#!/bin/sh
# Entrypoint of the `mosquitto` compose service (eclipse-mosquitto 2.0 image, busybox sh).
#
# Writes the broker's password file from MQTT_USER / MQTT_PASSWORD at every start, so no password file is
# ever committed, and none is written into the read-only bind mount of config/mosquitto/. Then hands the
# data and auth folders to the `mosquitto` user (the broker drops root to it right after reading its config)
# and runs the command it was given (compose: mosquitto -c /mosquitto/config/mosquitto.conf).
set -eu

: "${MQTT_USER:?MQTT_USER must be set}"
: "${MQTT_PASSWORD:?MQTT_PASSWORD must be set}"
case "$MQTT_USER" in
    *:*) echo "entrypoint: MQTT_USER must not contain ':'" >&2; exit 64 ;;
esac

auth_dir=/mosquitto/auth
passwd_file="$auth_dir/passwd"

umask 077
mkdir -p "$auth_dir" /mosquitto/data
# Plain "user:password" first, then hashed in place (PBKDF2-SHA512), so the password never appears in a
# process list. The temporary file is private (umask 077) and replaced atomically.
tmp="$(mktemp "$auth_dir/passwd.XXXXXX")"
printf '%s:%s\n' "$MQTT_USER" "$MQTT_PASSWORD" > "$tmp"
mosquitto_passwd -U "$tmp"
mv -f "$tmp" "$passwd_file"

if [ "$(id -u)" = 0 ]; then
    chown -R mosquitto:mosquitto "$auth_dir" /mosquitto/data
fi

exec "$@"
