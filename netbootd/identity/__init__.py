"""Host identity: keys and bundles (keys), the identities at rest (vault), netbootd's own TLS
(tls) and ARP verification of requesters (arp)."""
