"""`serve`'s iSCSI reconciler: every `iscsi.reconcile_interval` seconds, make tgtd hold exactly
netbootd's targets (iscsi.reconcile) -- so a restarted tgtd, which starts empty, gets them back
without anyone running a command. It never makes LUNs (a full-copy clone can take minutes):
`netbootd iscsi reconcile` does that.

tgtadm is a blocking subprocess, so each round runs in a worker thread; a round is skipped while
a CLI command holds the iSCSI lock. An unreachable tgtd is logged once as a warning (then at
debug) until it is back.
"""

from __future__ import annotations

import asyncio
import logging

from netbootd.config import Config
from netbootd.errors import TgtError
from netbootd.periodic import Periodic
from netbootd.stemcell import iscsi
from netbootd.stemcell.tgtadm import Tgtadm
from netbootd.store import Store

log = logging.getLogger("netbootd.iscsi")


class IscsiReconciler(Periodic):
    name = "iSCSI reconcile"

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg.iscsi.reconcile_interval, log)
        self.cfg = cfg
        self.store = store
        self.tgt = Tgtadm(cfg.iscsi.tgtd_control_port)
        self._tgtd_down = False

    def round(self) -> iscsi.Report | None:
        """One reconcile, if there is anything to serve and nobody else is reconciling."""
        if not self.store.luns():
            return None
        with iscsi.locked(self.cfg, wait=False) as got:
            if not got:
                log.debug("reconcile skipped: another netbootd command holds the iSCSI lock")
                return None
            try:
                rep = iscsi.reconcile(self.store, self.cfg, self.tgt)
            except TgtError as e:
                if not self._tgtd_down:
                    log.warning("iSCSI targets not applied: %s", e)
                else:
                    log.debug("tgtd still unreachable: %s", e)
                self._tgtd_down = True
                return None
        if self._tgtd_down:
            log.info("tgtd is reachable again (control port %d)", self.cfg.iscsi.tgtd_control_port)
            self._tgtd_down = False
        if rep.changed:
            log.info("iSCSI reconcile: %s", rep.summary())
            for line in rep.applied:
                log.info("iSCSI reconcile: %s", line)
        for err in rep.errors:
            log.error("iSCSI reconcile: %s", err)
        return rep

    async def tick(self) -> None:
        await asyncio.to_thread(self.round)
