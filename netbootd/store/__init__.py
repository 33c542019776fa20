"""The only code in netbootd that speaks SQL. SQLite in WAL mode, in the state directory.

`Store` is the query classes of each domain over one connection (store/db.py):

    db.py         the connection, transactions (`_tx`: BEGIN IMMEDIATE), read snapshots,
                  migrations (migrations.py, append-only), typed rows (`Row`)
    roles.py      roles, generations, artifacts, pruning, a role's re-provision flag
    hosts.py      hosts, tags, pins, events
    identity.py   identities (public halves), arming, per-boot identity tokens
    provision.py  one-shot re-provisioning: armings and flagged boots
    stemcell.py   role boot modes, gold images, iSCSI LUNs, NFS syncs and exports
    chain.py      a role's boot chain (transport, HTTP-boot payload, Secure Boot rule)
    api_tokens.py admin API bearer tokens (their SHA-256), the API's event feed
    discovery.py  discovered machines (bounded), host inventories with history, discovery rules
    bmc.py        per-host BMC settings (the password is a file: power/credentials.py)

The CLI and a running server open the same database: every lookup reads committed state, so
a host enrolled by the CLI boots correctly on its next request, without a restart.
"""

from netbootd.store.api_tokens import ApiTokenQueries
from netbootd.store.bmc import BmcQueries
from netbootd.store.chain import ChainQueries
from netbootd.store.db import DB_NAME
from netbootd.store.discovery import DiscoveryQueries
from netbootd.store.hosts import TOKEN_KEEP, HostQueries
from netbootd.store.identity import IdentityQueries
from netbootd.store.provision import ProvisionQueries
from netbootd.store.roles import RoleQueries
from netbootd.store.stemcell import StemCellQueries

__all__ = ["DB_NAME", "TOKEN_KEEP", "Store"]


class Store(RoleQueries, HostQueries, IdentityQueries, ProvisionQueries, StemCellQueries,
            ChainQueries, ApiTokenQueries, DiscoveryQueries, BmcQueries):
    """The state database: every query of every domain, over one connection."""
