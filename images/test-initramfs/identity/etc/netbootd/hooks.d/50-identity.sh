# Sourced by /init once the network is up, before the booted event (90-booted.sh).
# Fetches this host's identity the way a netbooted client does: the URL (a single-use per-boot
# token) and the server key's pin come from the kernel command line, curl refuses any server whose
# key does not match the pin (--pinnedpubkey; -k only because the client has no CA), and the
# bundle is unpacked over / . Prints what it got (fingerprint, modes, hostId -- never a key).
NB_IDENTITY=$(nb_arg netbootd.identity)
NB_PIN=$(nb_arg netbootd.pin)
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu PATH="$PATH:/usr/bin"
if [ -z "$NB_IDENTITY" ] || [ -z "$NB_PIN" ]; then
    nb_log "IDENTITY-NONE (no netbootd.identity= / netbootd.pin= on the command line)"
else
    # A server with another key (here: a pin that matches nothing) is refused before any request.
    curl -s -k --pinnedpubkey "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" --max-time 30 \
        -o /dev/null "$NB_IDENTITY"
    nb_log "IDENTITY-WRONG-PIN curl exit $?"
    code=$(curl -sS -k --pinnedpubkey "$NB_PIN" --max-time 60 -o /tmp/identity.tgz \
        -w '%{http_code}' "$NB_IDENTITY" 2>/tmp/identity.err)
    rc=$?
    if [ "$rc" = 0 ] && [ "$code" = 200 ] && tar -xzf /tmp/identity.tgz -C /; then
        rm -f /tmp/identity.tgz
        fp=$(ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $2}')
        nb_log "IDENTITY-FINGERPRINT $fp"
        nb_log "IDENTITY-MODES $(stat -c %a /etc/ssh/ssh_host_ed25519_key) $(stat -c %a /etc/ssh/ssh_host_rsa_key) $(stat -c %a /etc/wireguard/private.key) $(stat -c %a /etc/ssh/ssh_host_ed25519_key.pub)"
        nb_log "IDENTITY-HOSTID $(hostid)"
        nb_event identity-installed ",\"ed25519\":\"$fp\"" || nb_log "IDENTITY-EVENT-FAILED"
        # The same token a second time: refused.
        again=$(curl -s -k --pinnedpubkey "$NB_PIN" --max-time 30 -o /dev/null -w '%{http_code}' \
            "$NB_IDENTITY")
        nb_log "IDENTITY-REUSE $again"
    else
        nb_log "IDENTITY-FAILED curl exit $rc, HTTP $code: $(cat /tmp/identity.err)"
    fi
fi
