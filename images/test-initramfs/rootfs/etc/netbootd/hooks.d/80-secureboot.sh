# Sourced by /init: the firmware's Secure Boot state as this kernel saw it (efivarfs is a module in
# Debian's kernel, the boot log is not), reported with the booted event and printed for the test.
NB_SB=$(dmesg | sed -n 's/.*secureboot: Secure boot \([a-z]*\).*/\1/p' | head -1)
case "$NB_SB" in enabled|disabled) ;; *) NB_SB=unknown ;; esac
nb_log "SECUREBOOT $NB_SB"
NB_BOOTED_EXTRA="$NB_BOOTED_EXTRA,\"secureboot\":\"$NB_SB\""
