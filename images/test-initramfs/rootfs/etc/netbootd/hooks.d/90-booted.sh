# Sourced by /init once the network is up: tell netbootd this host booted.
if nb_event booted; then
    nb_log "BOOTED-EVENT-SENT $NB_EVENTS"
else
    nb_log "BOOTED-EVENT-FAILED $NB_EVENTS"
fi
