# Sourced by /init once the network is up: tell netbootd this host booted. Hooks before this one
# may add JSON members to the event in $NB_BOOTED_EXTRA (e.g. ',"marker":"..."').
if nb_event booted "$NB_BOOTED_EXTRA"; then
    nb_log "BOOTED-EVENT-SENT $NB_EVENTS"
else
    nb_log "BOOTED-EVENT-FAILED $NB_EVENTS"
fi
