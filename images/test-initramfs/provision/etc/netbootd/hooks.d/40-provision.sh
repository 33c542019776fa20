# Sourced by /init once the network is up, before the booted event (90-booted.sh).
# The test image's disk layout, run only on a boot whose kernel command line carries the
# re-provision flag (the exact word in /etc/netbootd/provision-flag, written by
# provision_overlay.py --flag): partition the first virtio disk with sfdisk, make an ext4 file
# system, write a marker file naming this boot (the first 12 hex digits of the SHA-256 of its
# netbootd.boot= token, i.e. netbootd's boot id) and report `provisioned` with this boot's token.
# Without the flag it only looks: every boot prints the marker it finds and sends it with the
# booted event, so a second boot shows whether the disk was wiped again.
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
NB_PFLAG=$(cat /etc/netbootd/provision-flag 2>/dev/null) || NB_PFLAG=netbootd.provision_disks=1
NB_DISK=/dev/vda
NB_PART=${NB_DISK}1
NB_BOOT_ID=$(printf %s "$NB_BOOT" | sha256sum | cut -c1-12)
mkdir -p /mnt
nb_log "PROVISION-BOOT $NB_BOOT_ID"

nb_wait_dev() {  # nb_wait_dev PATH: up to 10 s for a block device node
    _n=0
    while [ ! -b "$1" ] && [ $_n -lt 100 ]; do sleep 0.1; _n=$((_n + 1)); done
    [ -b "$1" ]
}

nb_provision() {
    step=disk; nb_wait_dev "$NB_DISK" || return 1
    # one Linux partition over the whole disk, on an MBR label; --wipe: whatever was there goes
    step=sfdisk; printf 'label: dos\n,,83\n' | /usr/sbin/sfdisk --quiet --wipe always "$NB_DISK" || return 1
    step=partition; nb_wait_dev "$NB_PART" || return 1
    step=mkfs; /usr/sbin/mke2fs -q -F -t ext4 -L netbootd-test "$NB_PART" || return 1
    step=mount; mount -t ext4 "$NB_PART" /mnt || return 1
    step=marker; echo "$NB_BOOT_ID" > /mnt/netbootd-marker; _rc=$?
    umount /mnt; sync
    return $_rc
}

nb_flag=absent
for _w in $(cat /proc/cmdline); do [ "$_w" = "$NB_PFLAG" ] && nb_flag=present; done
nb_log "PROVISION-FLAG $nb_flag ($NB_PFLAG)"
if [ "$nb_flag" = present ]; then
    nb_event provision-started || nb_log "PROVISION-STARTED-EVENT-FAILED"
    if nb_provision; then
        nb_log "PROVISION-DONE $NB_PART ext4, marker $NB_BOOT_ID"
        if nb_event provisioned ",\"marker\":\"$NB_BOOT_ID\""; then
            nb_log "PROVISIONED-EVENT-SENT"
        else
            nb_log "PROVISIONED-EVENT-FAILED $(cat /tmp/event-reply 2>/dev/null)"
        fi
    else
        nb_log "PROVISION-FAILED at $step"
        nb_event provision-failed ",\"step\":\"$step\"" || true
    fi
fi

# Every boot: what is on the disk now.
nb_marker=none
if nb_wait_dev "$NB_DISK" && [ -b "$NB_PART" ] && mount -t ext4 -o ro "$NB_PART" /mnt 2>/dev/null; then
    nb_marker=$(cat /mnt/netbootd-marker 2>/dev/null) || nb_marker=none
    umount /mnt
fi
nb_log "PROVISION-MARKER ${nb_marker:-none}"
NB_BOOTED_EXTRA="$NB_BOOTED_EXTRA,\"marker\":\"${nb_marker:-none}\""
