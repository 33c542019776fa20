"""netbootd's own iPXE: built from an operator's source tree with netbootd's CA as the trust
anchor and an embedded script that chains to the host's script over HTTPS.

    build.py    `netbootd ipxe build`: the source (a tree or a tarball), the build key, `make`
                per target, the cache under <state>/ipxe/builds/<key>/, the current pointer
    served.py   what `serve` hands out: the current build's files when they trust the current
                CA (else the distro's), by name, re-read when the pointer or the CA changes
"""
