# The discovery boot (netbootd.discovery=URL on the command line): udevd names the devices,
# the inventory agent (netbootd/inventory/agent.py, Python + pyudev) POSTs the report with this
# boot's token, then netbootd.discovery.action: poweroff (default) | reboot | wait.
# On an enrolled host's boot (no netbootd.discovery=) with netbootd.inventory=1 it reports too,
# to the server netbootd.events= names, and the boot goes on.
NB_DISCOVERY=$(nb_arg netbootd.discovery) || NB_DISCOVERY=
NB_INVENTORY=$(nb_arg netbootd.inventory) || NB_INVENTORY=
if [ -n "$NB_DISCOVERY" ] || [ "$NB_INVENTORY" = 1 ]; then
    mkdir -p /run/udev
    /sbin/ldconfig  # the cache ctypes.util.find_library (pyudev) reads
    # UEFI: the variables (the agent reads SecureBoot-<guid> there); /init mounts only sysfs
    [ -d /sys/firmware/efi/efivars ] && ! [ -e /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c ] \
        && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    /usr/lib/systemd/systemd-udevd --daemon --resolve-names=never 2>/dev/null \
        || nb_log "DISCOVERY-UDEVD-FAILED"
    /usr/bin/udevadm trigger --action=add --type=subsystems
    /usr/bin/udevadm trigger --action=add --type=devices
    /usr/bin/udevadm settle --timeout=30
    if PYTHONPATH=/opt/netbootd /usr/bin/python3 -m netbootd.inventory.agent --from-cmdline \
            --output /tmp/inventory.json; then
        nb_log "DISCOVERY-REPORT-SENT"
    else
        nb_log "DISCOVERY-REPORT-FAILED"
        [ "$(nb_arg netbootd.debug)" = 1 ] && cat /tmp/inventory.json
    fi
    if [ -n "$NB_DISCOVERY" ]; then
        case "$(nb_arg netbootd.discovery.action)" in
            wait) nb_log "DISCOVERY-WAITING"; while :; do sleep 3600; done ;;
            reboot) nb_log "reboot"; reboot -f ;;
            *) nb_log "DISCOVERY-POWEROFF"; poweroff -f ;;
        esac
    fi
fi
