#!/bin/sh
# Décroché -- assemble Asterisk's config directory for the compose rig.
#
# Runs once before Asterisk (service `asterisk-config` in docker-compose.yml).
# It does what asterisk-conf/README.md tells ops to do by hand -- both
# directories flat into /etc/asterisk -- and then sets the few values that
# depend on the container network, so that the files in the repository stay
# the single source of truth:
#
#   extensions.conf [globals]  IVR_AGI_HOST / IVR_AGI_PORT  (where FastAGI is)
#   manager.conf               bindaddr, the ivr user's permit and secret
#   pjsip.conf                 the trunk's address, only when TRUNK_MATCH is set
#                              (the SIP test rig, where sipp plays the operator)
#   rtp.conf                   a narrow RTP port range that compose can publish
#   asterisk.conf              astdbdir, when ASTDB_DIR is set (a volume of its
#                              own keeps the dynamic queue members)
#
# The directory is rebuilt from scratch on every start: no file edited inside
# the container survives, and no sample config of the image is left behind
# (with autoload, a stray sample file can switch a module on).
#
# Every substitution is checked afterwards: if the shipped files change shape
# and a pattern no longer matches, the rig refuses to start instead of running
# with the placeholder values.
#
# Environment (defaults in brackets):
#   DECROCHE_AMI_SECRET  required; 16+ characters of [A-Za-z0-9_.~-]
#   DECROCHE_SRC         where the repository's directories are mounted [/opt/decroche]
#   ASTERISK_ETC         the config directory to fill [/etc/asterisk]
#   AGI_HOST, AGI_PORT   the controller's FastAGI address [controller, 4573]
#   AMI_BINDADDR         address AMI listens on [127.0.0.1]
#   AMI_PERMIT           who may log in as ivr, address/mask [127.0.0.1/255.255.255.255]
#   RTP_START, RTP_END   RTP port range [10000, 10199]
#   TRUNK_MATCH          if set: the operator trunk's (only) address
#   ASTDB_DIR            if set: where Asterisk keeps astdb.sqlite3
#   ASTERISK_USER        who owns ASTDB_DIR [asterisk]
#   ASTERISK_GROUP       group that may read the files [asterisk]
set -eu

SRC=${DECROCHE_SRC:-/opt/decroche}
ETC=${ASTERISK_ETC:-/etc/asterisk}
AGI_HOST=${AGI_HOST:-controller}
AGI_PORT=${AGI_PORT:-4573}
AMI_BINDADDR=${AMI_BINDADDR:-127.0.0.1}
AMI_PERMIT=${AMI_PERMIT:-127.0.0.1/255.255.255.255}
RTP_START=${RTP_START:-10000}
RTP_END=${RTP_END:-10199}
TRUNK_MATCH=${TRUNK_MATCH:-}
ASTERISK_GROUP=${ASTERISK_GROUP:-asterisk}
ASTERISK_USER=${ASTERISK_USER:-asterisk}
ASTDB_DIR=${ASTDB_DIR:-}

die() {
    echo "asterisk-init: $*" >&2
    exit 1
}

# -- inputs ------------------------------------------------------------------
secret=${DECROCHE_AMI_SECRET:-}
[ -n "$secret" ] || die "DECROCHE_AMI_SECRET is not set (see docker/.env.example)"
case "$secret" in
    CHANGE_ME*) die "DECROCHE_AMI_SECRET is still the placeholder; generate one" ;;
    *[!A-Za-z0-9_.~-]*) die "DECROCHE_AMI_SECRET may only hold A-Z a-z 0-9 _ . ~ -" ;;
esac
[ "${#secret}" -ge 16 ] || die "DECROCHE_AMI_SECRET is too short (16 characters at least)"

is_port() {
    case "$1" in '' | *[!0-9]*) return 1 ;; esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}
is_port "$AGI_PORT" || die "AGI_PORT '$AGI_PORT' is not a port"
is_port "$RTP_START" || die "RTP_START '$RTP_START' is not a port"
is_port "$RTP_END" || die "RTP_END '$RTP_END' is not a port"
[ "$RTP_START" -le "$RTP_END" ] || die "RTP_START is above RTP_END"
case "$AGI_HOST$AMI_BINDADDR$AMI_PERMIT$TRUNK_MATCH" in
    *[!A-Za-z0-9./:_-]*) die "AGI_HOST, AMI_BINDADDR, AMI_PERMIT and TRUNK_MATCH take host names and addresses only" ;;
esac
case "$ASTDB_DIR" in
    '' | /*) ;;
    *) die "ASTDB_DIR must be an absolute path" ;;
esac
case "$ASTDB_DIR" in
    *[!A-Za-z0-9./_-]*) die "ASTDB_DIR '$ASTDB_DIR' holds unexpected characters" ;;
esac

[ -f "$SRC/dialplans/extensions.conf" ] || die "$SRC/dialplans/extensions.conf is missing (mount dialplans/)"
[ -f "$SRC/asterisk-conf/manager.conf" ] || die "$SRC/asterisk-conf/manager.conf is missing (mount asterisk-conf/)"
[ -d "$ETC" ] || die "$ETC does not exist"

# -- assemble ----------------------------------------------------------------
find "$ETC" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
cp "$SRC"/asterisk-conf/*.conf "$SRC"/dialplans/*.conf "$ETC"/

# replace FILE PATTERN REPLACEMENT: sed s|PATTERN|REPLACEMENT| on whole lines,
# then insist that the replacement is there.
replace() {
    file=$ETC/$1
    sed -i "s|$2|$3|" "$file"
    grep -qxF "$3" "$file" || die "$1: no line matched '$2' (did the shipped file change?)"
}

replace extensions.conf '^IVR_AGI_HOST=.*$' "IVR_AGI_HOST=$AGI_HOST"
replace extensions.conf '^IVR_AGI_PORT=.*$' "IVR_AGI_PORT=$AGI_PORT"
replace manager.conf '^bindaddr = .*$' "bindaddr = $AMI_BINDADDR"
replace manager.conf '^permit = .*$' "permit = $AMI_PERMIT"
replace manager.conf '^secret = .*$' "secret = $secret"

if [ -n "$TRUNK_MATCH" ]; then
    # Keep one 'match' line (the first) pointing at TRUNK_MATCH, drop the others.
    awk -v addr="$TRUNK_MATCH" '
        /^match = / { if (!done) { print "match = " addr; done = 1 }; next }
        { print }
    ' "$ETC/pjsip.conf" >"$ETC/pjsip.conf.new"
    mv "$ETC/pjsip.conf.new" "$ETC/pjsip.conf"
    grep -qxF "match = $TRUNK_MATCH" "$ETC/pjsip.conf" || die "pjsip.conf: no 'match = ' line"
    replace pjsip.conf '^contact = sip:.*$' "contact = sip:$TRUNK_MATCH:5060"
fi

if [ ! -f "$ETC/rtp.conf" ]; then
    printf '; Written by docker/asterisk-init.sh: the range docker-compose.yml publishes.\n[general]\nrtpstart = %s\nrtpend = %s\n' \
        "$RTP_START" "$RTP_END" >"$ETC/rtp.conf"
fi

if [ -n "$ASTDB_DIR" ]; then
    grep -q '^\[directories\]' "$ETC/asterisk.conf" && die "asterisk.conf already has [directories]"
    printf '\n; Written by docker/asterisk-init.sh: astdb on a volume of its own.\n[directories]\nastdbdir => %s\n' \
        "$ASTDB_DIR" >>"$ETC/asterisk.conf"
    mkdir -p "$ASTDB_DIR"
    if getent passwd "$ASTERISK_USER" >/dev/null 2>&1; then
        chown "$ASTERISK_USER" "$ASTDB_DIR"
    fi
fi

# -- permissions ---------------------------------------------------------------
# As the README says: 0640, readable by Asterisk's group (the secret is in here).
chmod 0640 "$ETC"/*.conf
if getent group "$ASTERISK_GROUP" >/dev/null 2>&1; then
    chgrp "$ASTERISK_GROUP" "$ETC"/*.conf
fi

echo "asterisk-init: $(find "$ETC" -maxdepth 1 -name "*.conf" | wc -l) config files in $ETC; FastAGI at $AGI_HOST:$AGI_PORT; AMI on $AMI_BINDADDR for $AMI_PERMIT"
